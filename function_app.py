"""Azure Functions entry point (Python v2 model). Triggers only: Functions objects <-> the core."""

import json

import azure.functions as func

from restricted_sender.edge import HttpAnswer, runtime
from restricted_sender.settings import EVENTS_QUEUE, VERIFY_QUEUE

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)


def _response(answer: HttpAnswer) -> func.HttpResponse:
    return func.HttpResponse(json.dumps(answer.body), status_code=answer.status, mimetype="application/json")


@app.function_name("alerts")
@app.route(route="alerts", methods=["POST"])
def alerts(req: func.HttpRequest) -> func.HttpResponse:
    return _response(runtime.receive_alerts(req.get_body(), dict(req.headers)))


@app.function_name("process_event")
@app.queue_trigger(arg_name="msg", queue_name=EVENTS_QUEUE, connection="AzureWebJobsStorage")
async def process_event(msg: func.QueueMessage) -> None:
    await runtime.process_message(msg.get_body().decode("utf-8"), attempt=msg.dequeue_count or 1)


@app.function_name("verify_unblock")
@app.queue_trigger(arg_name="msg", queue_name=VERIFY_QUEUE, connection="AzureWebJobsStorage")
async def verify_unblock(msg: func.QueueMessage) -> None:
    await runtime.verify_message(msg.get_body().decode("utf-8"), attempt=msg.dequeue_count or 1)


@app.function_name("unblock_user")
@app.route(route="users/{upn}/unblock", methods=["POST"])
async def unblock_user(req: func.HttpRequest) -> func.HttpResponse:
    return _response(await runtime.unblock(req.route_params["upn"], req.get_body(), dict(req.headers)))


@app.function_name("user_status")
@app.route(route="users/{upn}", methods=["GET"])
async def user_status(req: func.HttpRequest) -> func.HttpResponse:
    return _response(await runtime.user_status(req.route_params["upn"], dict(req.headers)))


@app.function_name("restricted_users")
@app.route(route="restricted", methods=["GET"])
async def restricted_users(req: func.HttpRequest) -> func.HttpResponse:
    return _response(await runtime.restricted(dict(req.headers)))
