"""Echo ClientApp: proves it ran (a marker file), sends the received arrays back unchanged."""

from pathlib import Path

from flwr.app import Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


@app.query()
def echo(msg: Message, context: Context) -> Message:
    marker = str(context.run_config["marker"])
    if marker:
        Path(marker, str(context.node_id)).write_text("ran\n")
    content = RecordDict({"metrics": MetricRecord({"ok": 1})})
    if "arrays" in msg.content.array_records:
        content["arrays"] = msg.content.array_records["arrays"]
    return Message(content, reply_to=msg)
