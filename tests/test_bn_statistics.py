"""``bn-statistics``: the BatchNorm running variance the coordinator builds from the sites' statistics.

``mean`` averages each site's variance (the spread within a site); ``mixture`` is the variance of all the sites'
activations taken together, checked here against the variance of the pooled samples themselves."""

from __future__ import annotations

import numpy as np
import pytest

from server.config import federation_from_run_config
from server.privacy import check_privacy_settings
from server.strategies.bn_statistics import mixture_variances
from shared.config import PipelineConfig
from shared.errors import ConfigError
from tests.fed_support import default_run_config
from tests.test_fed_strategies import configure, make_strategy, reply_to

RNG = np.random.default_rng(7)
#: three sites' activations of one 3-channel BatchNorm layer: other offsets and spreads (other scanners)
SAMPLES = [RNG.normal(loc, scale, size=(n, 3)) for loc, scale, n in ((0.0, 1.0, 40), (2.5, 0.5, 25), (-1.0, 2.0, 60))]
GLOBAL = {
    "conv.weight": np.ones((2, 2), np.float32),
    "bn.running_mean": np.zeros(3, np.float32),
    "bn.running_var": np.ones(3, np.float32),
    "bn.num_batches_tracked": np.array(5, np.int64),
}


def site_arrays(x: np.ndarray) -> dict[str, np.ndarray]:
    return {
        "conv.weight": np.full((2, 2), 0.9, np.float32),
        "bn.running_mean": x.mean(axis=0).astype(np.float32),
        "bn.running_var": x.var(axis=0).astype(np.float32),
        "bn.num_batches_tracked": np.array(8, np.int64),
    }


def test_the_mixture_variance_is_the_variance_of_the_pooled_samples() -> None:
    pooled = np.concatenate(SAMPLES)
    weights = [len(x) for x in SAMPLES]
    sites = [site_arrays(x) for x in SAMPLES]
    mean = {k: np.average(np.stack([s[k] for s in sites]), axis=0, weights=weights) for k in GLOBAL}
    mixed = mixture_variances(mean, sites, weights)
    assert np.allclose(mixed["bn.running_var"], pooled.var(axis=0), rtol=1e-5)
    assert np.allclose(mixed["bn.running_mean"], pooled.mean(axis=0), rtol=1e-5)  # the mean's own, unchanged
    assert (mixed["bn.running_var"] > mean["bn.running_var"] * 1.5).all(), "the between-site spread is missing"
    assert mixed["conv.weight"] is mean["conv.weight"] and mixed["bn.num_batches_tracked"] is mean["bn.num_batches_tracked"]
    # one site, or sites with one distribution: the mixture is the mean
    alone = mixture_variances(sites[0], sites[:1], [3])
    assert np.allclose(alone["bn.running_var"], sites[0]["bn.running_var"], rtol=1e-6)
    with pytest.raises(ValueError, match="one weight >= 0 per site"):
        mixture_variances(mean, sites, [1, 2])


@pytest.mark.parametrize("strategy", ["fedavg", "fedavgm"])
def test_the_coordinator_pools_the_variance_only_when_asked(strategy: str) -> None:
    pooled = np.concatenate(SAMPLES)
    got = {}
    for rule in ("mean", "mixture"):
        s = make_strategy(strategy, **{"bn-statistics": rule})
        msgs = configure(s, GLOBAL)
        by_node = {m.metadata.dst_node_id: m for m in msgs}
        replies = [reply_to(by_node[node], site_arrays(x), n=len(x)) for node, x in zip((11, 12, 13), SAMPLES, strict=True)]
        arrays, _ = s.aggregate_train(1, replies)
        got[rule] = {k: v.numpy() for k, v in arrays.items()}
    within = np.average(np.stack([x.var(axis=0) for x in SAMPLES]), axis=0, weights=[len(x) for x in SAMPLES])
    assert np.allclose(got["mean"]["bn.running_var"], within, rtol=1e-5)
    assert np.allclose(got["mixture"]["bn.running_var"], pooled.var(axis=0), rtol=1e-5)
    for rule in got:  # the rest as before: the weighted mean of the running means, the counter, the weights
        assert np.allclose(got[rule]["bn.running_mean"], pooled.mean(axis=0), rtol=1e-5)
        assert got[rule]["bn.num_batches_tracked"] == 8
        assert np.allclose(got[rule]["conv.weight"], 0.9)


@pytest.mark.parametrize(
    ("extra", "dp", "message"),
    [
        ({"strategy": "fedmedian"}, "off", "bn-statistics='mixture' with strategy='fedmedian'"),
        ({"strategy": "fedadam"}, "off", "bn-statistics='mixture' with strategy='fedadam'"),
        ({"strategy": "fedavg"}, "central", "bn-statistics='mixture' with dp=central"),
        ({"secure-aggregation": True, "update-norm-factor": 0.0}, "off", "with secure-aggregation=true"),
        ({"bn-statistics": "pooled"}, "off", "bn-statistics='pooled' is not allowed: expected one of mean, mixture"),
    ],
)
def test_mixture_is_refused_where_the_coordinator_cannot_read_each_sites_statistics(extra, dp, message) -> None:
    rc = default_run_config() | {"bn-statistics": "mixture"} | extra
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("+", r"\+")):
        fed = federation_from_run_config(rc)
        check_privacy_settings(fed, PipelineConfig.defaults({"dp": dp}))


def test_a_hostile_sites_outlying_running_mean_is_rejected_before_the_mixture_reads_it() -> None:
    """Under ``mixture`` a site's running mean enters the variance squared; a site reporting a mean far from the
    others is caught by the update-norm bound (run before aggregation) and the variance is the honest sites'."""
    honest_pooled = np.concatenate(SAMPLES)
    hostile = site_arrays(SAMPLES[0])
    hostile["bn.running_mean"] = np.full(3, 500.0, np.float32)  # would add ~ w(1-w) x 500^2 to the variance
    s = make_strategy("fedavgm", **{"bn-statistics": "mixture"})
    s.update_norm_factor = 10.0  # the default bound (the study sets it with each stage: server/study.py)
    by_node = {m.metadata.dst_node_id: m for m in configure(s, GLOBAL)}
    replies = [reply_to(by_node[node], site_arrays(x), n=len(x)) for node, x in zip((11, 12, 13), SAMPLES, strict=True)]
    replies.append(reply_to(by_node[14], hostile, n=40))
    arrays, _ = s.aggregate_train(1, replies)
    rec = s.last_train
    assert rec.contributed == ["site-a", "site-b", "site-c"]
    assert "update-norm-factor" in rec.rejected["site-d"]
    assert np.allclose(arrays["bn.running_var"].numpy(), honest_pooled.var(axis=0), rtol=1e-5)
