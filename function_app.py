"""Azure Functions entry point (Python v2 model). Triggers only: Functions objects <-> the core."""

import json
import os
from datetime import UTC, datetime
from typing import List  # noqa: UP035  (see defender_stream)

import azure.functions as func

from restricted_sender.entrypoints.edge import HttpAnswer, runtime
from restricted_sender.model import Net
from restricted_sender.settings import CONTENT_QUEUE, DEFENDER_EVENTHUB, EVENTS_QUEUE, VERIFY_QUEUE

EVERY_MINUTE = "0 * * * * *"  # the nets keep their own intervals (POLL_ALERTS_MINUTES, SWEEP_MINUTES)
EVERY_TEN_MINUTES = "0 */10 * * * *"  # the doctor runs on the first tick after start-up, then daily

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)


def _response(answer: HttpAnswer) -> func.HttpResponse:
    return func.HttpResponse(json.dumps(answer.body), status_code=answer.status, mimetype="application/json")


@app.function_name("alerts")
@app.route(route="alerts", methods=["POST"])
def alerts(req: func.HttpRequest) -> func.HttpResponse:
    return _response(runtime.receive_alerts(req.get_body(), dict(req.headers)))


@app.function_name("alerts_o365")
@app.route(route="alerts/o365", methods=["POST"])
def alerts_o365(req: func.HttpRequest) -> func.HttpResponse:
    return _response(runtime.receive_o365(req.get_body(), dict(req.headers)))


@app.function_name("expand_content")
@app.queue_trigger(arg_name="msg", queue_name=CONTENT_QUEUE, connection="AzureWebJobsStorage")
async def expand_content(msg: func.QueueMessage) -> None:
    await runtime.expand_message(msg.get_body().decode("utf-8"), attempt=msg.dequeue_count or 1)


@app.function_name("poll_alerts")
@app.timer_trigger(arg_name="timer", schedule=EVERY_MINUTE, run_on_startup=False, use_monitor=False)
async def poll_alerts(timer: func.TimerRequest) -> None:
    await runtime.run_net(Net.POLL)


@app.function_name("doctor_daily")
@app.timer_trigger(arg_name="timer", schedule=EVERY_TEN_MINUTES, run_on_startup=False, use_monitor=False)
async def doctor_daily(timer: func.TimerRequest) -> None:
    await runtime.doctor_tick(datetime.now(UTC))


@app.function_name("doctor")
@app.route(route="doctor", methods=["GET"])
async def doctor(req: func.HttpRequest) -> func.HttpResponse:
    return _response(await runtime.doctor(dict(req.headers)))


@app.function_name("sweep_restricted")
@app.timer_trigger(arg_name="timer", schedule=EVERY_MINUTE, run_on_startup=False, use_monitor=False)
async def sweep_restricted(timer: func.TimerRequest) -> None:
    await runtime.run_net(Net.SWEEP)


# Registered only when configured: an Event Hub trigger without its connection would fail to start.
if os.environ.get(f"{DEFENDER_EVENTHUB}_NAME"):

    @app.function_name("defender_stream")
    # The Event Hubs trigger checkpoints a batch whether or not the function succeeded: retry it here first.
    @app.retry(strategy="exponential_backoff", max_retry_count="5", minimum_interval="00:00:05",
               maximum_interval="00:05:00")  # fmt: skip
    @app.event_hub_message_trigger(
        arg_name="events",
        event_hub_name=os.environ[f"{DEFENDER_EVENTHUB}_NAME"],
        connection=DEFENDER_EVENTHUB,
        cardinality=func.Cardinality.MANY,
        consumer_group=os.environ.get(f"{DEFENDER_EVENTHUB}_CONSUMER_GROUP") or "$Default",
    )
    # typing.List, not list[...]: the worker's loader refuses the builtin generic ("invalid non-type annotation").
    async def defender_stream(events: List[func.EventHubEvent]) -> None:  # noqa: UP006
        await runtime.defender_events([e.get_body() for e in events])


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


@app.function_name("restore_mailbox")
@app.route(route="users/{upn}/restore", methods=["POST"])
async def restore_mailbox(req: func.HttpRequest) -> func.HttpResponse:
    return _response(await runtime.restore(req.route_params["upn"], req.get_body(), dict(req.headers)))


@app.function_name("user_status")
@app.route(route="users/{upn}", methods=["GET"])
async def user_status(req: func.HttpRequest) -> func.HttpResponse:
    return _response(await runtime.user_status(req.route_params["upn"], dict(req.headers)))


@app.function_name("restricted_users")
@app.route(route="restricted", methods=["GET"])
async def restricted_users(req: func.HttpRequest) -> func.HttpResponse:
    return _response(await runtime.restricted(dict(req.headers)))
