"""Azure Functions entry point (Python v2 model). Triggers only: Functions objects <-> the core."""

import json

import azure.functions as func

from restricted_sender.edge import runtime
from restricted_sender.settings import EVENTS_QUEUE

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)


@app.function_name("alerts")
@app.route(route="alerts", methods=["POST"])
def alerts(req: func.HttpRequest) -> func.HttpResponse:
    answer = runtime.receive_alerts(req.get_body(), dict(req.headers))
    return func.HttpResponse(json.dumps(answer.body), status_code=answer.status, mimetype="application/json")


@app.function_name("process_event")
@app.queue_trigger(arg_name="msg", queue_name=EVENTS_QUEUE, connection="AzureWebJobsStorage")
async def process_event(msg: func.QueueMessage) -> None:
    await runtime.process_message(msg.get_body().decode("utf-8"))
