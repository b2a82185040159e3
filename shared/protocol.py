"""The federation's wire protocol: message types, config keys and metric keys.

Server (server/) and hospitals (client/) both import these names, so a typo is an ImportError,
not a silently missing metric. Every reply of one message type carries EXACTLY the same metric
keys from every site (Flower 1.42 ends the run on inconsistent replies), and only aggregate
values: counts, sums, losses, fixed-bin histograms. Never per-patient values, ids or images.

Flow of one study (``server/study.py``, one :class:`server.stage.Stage` after the other):

1. ``query.info``      server -> every site: empty content. Reply: ConfigRecord ``info`` with
   ``INFO_SITE`` (site name, never a patient id), ``INFO_ROLE`` (``ROLE_TRAIN`` or ``ROLE_EVAL_ONLY``) and
   ``INFO_PRETRAINING`` (the site's node config ``pretraining``: one of ``PRETRAINING_CHOICES``),
   MetricRecord ``metrics`` with the counts below (``INFO_METRICS``).
2. ``train.seg`` / ``evaluate.seg``   stage 1 rounds on patients with masks.
3. ``query.roi``       server -> every site: the final global segmenter in ArrayRecord ``arrays``,
   ConfigRecord ``config`` with ``segmenter-hash``. The site predicts masks for all its patients,
   builds the ROI datasets, caches them on disk keyed by that hash. Reply: ``ROI_METRICS`` per dataset.
4. ``train.cls`` / ``evaluate.cls``   stage 2 rounds, one run of rounds per dataset (config ``dataset``). With
   ``cls-pretrain-rounds`` > 0 each dataset's run starts with that many ``train.cls`` rounds of config
   ``stage = STAGE_CLS_PRETRAIN`` (contrastive pretraining of the backbone, no labels read, no evaluation).
5. ``evaluate.seg`` / ``evaluate.cls`` with config ``split = "test"``: the final federated test.

With run config ``secure-aggregation = true`` every ``train.seg`` / ``train.cls`` round is four messages of that type
carrying Flower's SecAgg+ ConfigRecord ``secaggplus_configs`` (setup, share keys, collect masked vectors, unmask:
``server/secure_aggregation.py``, ``client/secure_aggregation.py``); only the collect stage carries ``arrays`` and
``config``, its reply has no array data and its metrics are ``SECURE_TRAIN_METRICS``.
"""

from __future__ import annotations

# --- message types (Flower: "<category>.<action>") -------------------------------------------
QUERY_INFO = "query.info"
QUERY_ROI = "query.roi"
TRAIN_SEG = "train.seg"
EVALUATE_SEG = "evaluate.seg"
TRAIN_CLS = "train.cls"
EVALUATE_CLS = "evaluate.cls"

# --- record names inside a RecordDict --------------------------------------------------------
ARRAYS = "arrays"
CONFIG = "config"
METRICS = "metrics"
INFO = "info"

# --- ConfigRecord keys sent by the server ----------------------------------------------------
CFG_ROUND = "server-round"  # injected by Flower's strategies
CFG_STAGE = "stage"  # STAGE_SEG | STAGE_CLS | STAGE_CLS_PRETRAIN
STAGE_SEG = "seg"  # the wire value of server.stage.StageKind.SEG
STAGE_CLS = "cls"
STAGE_CLS_PRETRAIN = "cls-pretrain"  # train.cls rounds of contrastive backbone pretraining (no labels, no eval)
CFG_DATASET = "dataset"  # "t1" | "t2" | "t1ce" | "t1+t2" ... (stage 2 only)
CFG_SPLIT = "split"  # evaluation split: "val" | "test"
CFG_LOCAL_EPOCHS = "local-epochs"
CFG_LR = "lr"
CFG_PROX_MU = "proximal-mu"  # FedProx (Flower's FedProx sends this key)
CFG_SEGMENTER_HASH = "segmenter-hash"
CFG_KEEP_LOCAL_NORM = "keep-local-norm"  # FedBN: the site keeps its own normalisation statistics
CFG_TOTAL_ROUNDS = "total-rounds"  # rounds of this stage (the classifier's lr schedule spans all of them)
CFG_STUDY = "study-id"  # short fingerprint of the study settings (keys the site's FedBN state on disk)
CFG_TRANSPORT_DTYPE = "transport-dtype"  # dtype of floating arrays in replies ("float32" | "float16")
#: set by the site's own secure-aggregation mod (never trusted from the coordinator): this evaluation is masked
#: into a secure sum, so the histograms are the fixed ``hist-bins`` bins, unmerged (client/secure_aggregation.py)
CFG_SECURE_SUM = "secure-sum"

# --- metric keys -----------------------------------------------------------------------------
NUM_EXAMPLES = "num-examples"  # Flower's weighting key: number of training/eval images (slices)
NUM_PATIENTS = "num-patients"
TRAIN_LOSS = "train-loss"  # mean loss over the local epochs
TRAIN_LOSS_FIRST = "train-loss-first"  # mean loss of the first local epoch
TRAIN_SECONDS = "train-seconds"  # wall time of local training only

UPDATE_WEIGHT = "update-weight"  # always 1: central DP averages the sites' clipped updates uniformly
DP_EPSILON_STUDY = "dp-epsilon-study"  # local DP: this study's epsilon at the site so far (unit: one patient)
DP_EPSILON_SITE = "dp-epsilon-site-total"  # local DP: the site's ledger, every study composed (one patient)
DP_EPSILON_LEFT = "dp-epsilon-left"  # local DP: budget minus ledger total; -1 when the site set no budget
DP_DELTA = "dp-delta-site"  # local DP: the delta the site's epsilons are given at

TRAIN_METRICS = (
    NUM_EXAMPLES,
    NUM_PATIENTS,
    TRAIN_LOSS,
    TRAIN_LOSS_FIRST,
    TRAIN_SECONDS,
    UPDATE_WEIGHT,
    DP_EPSILON_STUDY,
    DP_EPSILON_SITE,
    DP_EPSILON_LEFT,
    DP_DELTA,
)
DP_SITE_METRICS = (DP_EPSILON_STUDY, DP_EPSILON_SITE, DP_EPSILON_LEFT, DP_DELTA)
# secure aggregation: coordinates of the site's weighted update clipped to +-secure-aggregation-clip before masking
SECAGG_CLIPPED = "secagg-clipped"
SECURE_TRAIN_METRICS = TRAIN_METRICS + (SECAGG_CLIPPED,)
NO_DP_METRICS = {
    UPDATE_WEIGHT: 1,
    DP_EPSILON_STUDY: 0.0,
    DP_EPSILON_SITE: 0.0,
    DP_EPSILON_LEFT: -1.0,
    DP_DELTA: 0.0,
}

DICE_INTERSECTION = "dice-intersection"
DICE_PRED_SUM = "dice-pred-sum"
DICE_TRUE_SUM = "dice-true-sum"
EVAL_LOSS = "eval-loss"
EVAL_SECONDS = "eval-seconds"

EVAL_SEG_METRICS = (
    NUM_EXAMPLES,
    NUM_PATIENTS,
    DICE_INTERSECTION,
    DICE_PRED_SUM,
    DICE_TRUE_SUM,
    EVAL_LOSS,
    EVAL_SECONDS,
)

HIST_POS = "hist-pos"  # list[int]: patient-level scores of NPL patients, fixed bins on [0, 1]
HIST_NEG = "hist-neg"  # list[int]: patient-level scores of NPC patients
# list[int]: bins merged at the site so that no range holds fewer than its min-hist-count patients: the group
# starting at bin i spans hist-span[i] bins (its counts sit in bin i), bins inside a group have span 0
# (shared.metrics.coarse_histograms). The three lists have the site's length: min(hist-bins, max-hist-bins).
HIST_SPAN = "hist-span"

EVAL_CLS_METRICS = (NUM_EXAMPLES, NUM_PATIENTS, HIST_POS, HIST_NEG, HIST_SPAN, EVAL_LOSS, EVAL_SECONDS)

# --- query.info: ConfigRecord INFO keys and values, then counts only ---------------------------
INFO_SITE = "site"
INFO_ROLE = "role"
ROLE_TRAIN = "train"
ROLE_EVAL_ONLY = "eval-only"
ROLES = (ROLE_TRAIN, ROLE_EVAL_ONLY)
#: the site's own say over contrastive pretraining rounds (its node config ``pretraining``), announced so that the
#: coordinator never sends pretraining rounds to a site that refuses them (the site refuses them anyway)
INFO_PRETRAINING = "pretraining"
PRETRAINING_ALL = "all"  # training patients and patients without a diagnosis
PRETRAINING_DIAGNOSED = "diagnosed"  # training patients (with a diagnosis) only
PRETRAINING_REFUSE = "refuse"  # no pretraining round runs at the site
PRETRAINING_CHOICES = (PRETRAINING_ALL, PRETRAINING_DIAGNOSED, PRETRAINING_REFUSE)

PATIENTS = "patients"  # ingested patients
PATIENTS_NPC = "patients-npc"
PATIENTS_NPL = "patients-npl"
PATIENTS_UNLABELLED = "patients-unlabelled"
PATIENTS_WITH_MASK = "patients-with-mask"
PATIENTS_TRAIN = "patients-train"
PATIENTS_VAL = "patients-val"
PATIENTS_TEST = "patients-test"
BLOCKING_PROBLEMS = "blocking-problems"
WARNINGS = "warnings"

INFO_METRICS = (
    PATIENTS,
    PATIENTS_NPC,
    PATIENTS_NPL,
    PATIENTS_UNLABELLED,
    PATIENTS_WITH_MASK,
    PATIENTS_TRAIN,
    PATIENTS_VAL,
    PATIENTS_TEST,
    BLOCKING_PROBLEMS,
    WARNINGS,
)

# --- query.roi: per dataset, flattened as "<dataset>/<key>" (e.g. "t1+t2/patients-train") ----------
ROI_TRAIN = PATIENTS_TRAIN
ROI_VAL = PATIENTS_VAL
ROI_TEST = PATIENTS_TEST
ROI_MISSING_SEQUENCE = "missing-sequence"
ROI_EMPTY_PREDICTION = "empty-prediction"
# patients without a diagnosis with an ROI that the site's pretraining learns from (0 unless its pretraining is "all")
ROI_UNLABELLED = PATIENTS_UNLABELLED
ROI_KEYS = (ROI_TRAIN, ROI_VAL, ROI_TEST, ROI_MISSING_SEQUENCE, ROI_EMPTY_PREDICTION, ROI_UNLABELLED)

SPLITS = ("train", "val", "test")


def roi_metric_key(dataset: str, key: str) -> str:
    """``("t1+t2", ROI_TRAIN)`` -> ``"t1+t2/patients-train"``; ``key`` must be one of ``ROI_KEYS``."""
    if key not in ROI_KEYS:
        raise ValueError(f"{key!r} is not a query.roi key: expected one of {ROI_KEYS}")
    return f"{dataset}/{key}"
