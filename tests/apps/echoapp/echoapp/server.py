"""Echo ServerApp: one query per node per round; writes {node: "ok" | error reason} and each round's seconds.

``grid = "nasofl"`` sends through the study's own pull loop (server.polling_grid, from the nasofl installed on the
coordinator) instead of Flower's ``send_and_receive``, to compare the two; ``grid = "nasofl-flower-object-pulls"``
the same loop with Flower's own retry of arrays not uploaded yet (1 s up to 10 s apart).
"""

import json
import time
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, RecordDict
from flwr.serverapp import Grid, ServerApp

app = ServerApp()
#: elements of ResNet101's largest tensor (layer4 3x3 conv, 512x512x3x3): the payload is cut into such arrays
CHUNK = 512 * 512 * 3 * 3


def payload(megabytes: float, dtype: str) -> RecordDict:
    if megabytes <= 0:
        return RecordDict()
    itemsize = np.dtype(dtype).itemsize
    left = int(megabytes * 1e6 / itemsize)
    arrays, i = {}, 0
    while left > 0:
        n = min(CHUNK, left)
        arrays[f"w{i}"] = Array(np.full(n, i, dtype=dtype))
        left, i = left - n, i + 1
    return RecordDict({"arrays": ArrayRecord(arrays)})


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    deadline = time.time() + 120
    while len(nodes := sorted(grid.get_node_ids())) < int(cfg["nodes"]) and time.time() < deadline:
        time.sleep(0.5)
    content = payload(float(cfg["payload-mb"]), str(cfg["dtype"]))
    if str(cfg["grid"]).startswith("nasofl"):
        from flwr.superlink.grid import http_grid

        from server.polling_grid import PollingGrid

        flowers = http_grid.pull_objects
        grid = PollingGrid(grid)
        if str(cfg["grid"]) == "nasofl-flower-object-pulls":  # our loop, Flower's 1 s..10 s object retries
            http_grid.pull_objects = flowers
    result: dict = {"nodes": nodes, "replies": {}, "round_s": []}
    for _ in range(int(cfg["rounds"])):
        msgs = [Message(content, dst_node_id=n, message_type="query") for n in nodes]
        t0 = time.time()
        replies = list(grid.send_and_receive(msgs, timeout=600))
        result["round_s"].append(time.time() - t0)
        node_of = {m.metadata.message_id: m.metadata.dst_node_id for m in msgs}
        for reply in replies:
            node = node_of.get(reply.metadata.reply_to_message_id, reply.metadata.src_node_id)
            result["replies"][str(node)] = reply.error.reason if reply.has_error() else "ok"
    Path(str(cfg["out"])).write_text(json.dumps(result))
