"""Index ``function_app.py`` the way the Functions host does, with the runtime's own loader, in a fresh process.

``app.get_functions()`` accepts mistakes the worker later refuses (a handler parameter with no binding, a
wrong annotation); ``azure_functions_runtime``'s ``process_indexed_function`` is what the host runs on them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("msgraph", "azure.identity", "aiohttp")

# Runs in a fresh interpreter: argv[1] is the app folder (holding function_app.py), argv[2] the heavy module
# names as JSON. Prints one JSON object.
INDEXER = textwrap.dedent(
    """
    import json
    import sys
    import types

    folder = sys.argv[1]
    sys.path.insert(0, folder)

    from azure_functions_runtime import loader
    from azure_functions_runtime.bindings.meta import load_binding_registry
    from azure_functions_runtime.functions import Registry


    class Bag:
        def __init__(self, **fields):
            self.__dict__.update(fields)


    # Stand-ins for the worker's protobuf messages: the loader only constructs them and reads these constants.
    protos = types.SimpleNamespace(
        BindingInfo=type("BindingInfo", (Bag,), {"undefined": 0, "out": 1, "inout": 2}),
        RpcFunctionMetadata=type("RpcFunctionMetadata", (Bag,), {}),
        RpcRetryOptions=type("RpcRetryOptions", (Bag,), {"RetryStrategy": type("RetryStrategy", (Bag,), {})}),
        ParameterBinding=type("ParameterBinding", (Bag,), {}),
    )
    heavy = tuple(json.loads(sys.argv[2]))


    def loaded_heavy():
        return sorted(m for m in sys.modules if any(m == h or m.startswith(h + ".") for h in heavy))


    stage = "load_binding_registry"
    try:
        load_binding_registry()
        stage = "index_function_app"
        indexed = loader.index_function_app(folder + "/function_app.py")
        stage = "process_indexed_function"
        registry = Registry()
        metadata, _logs = loader.process_indexed_function(protos, registry, indexed, folder)
    except Exception as error:
        print(json.dumps({"ok": False, "stage": stage, "error": type(error).__name__, "message": str(error)}))
        sys.exit(1)

    functions = {}
    for meta in metadata:
        info = registry.get_function(meta.function_id)
        functions[meta.name] = {
            "entry_point": meta.entry_point,
            "script_file": meta.script_file,
            "raw_bindings": [json.loads(raw) for raw in meta.raw_bindings],
            "bindings": {name: {"type": b.type, "direction": b.direction} for name, b in meta.bindings.items()},
            "retry": meta.retry_options is not None,
            "is_async": info.is_async,
            "is_http_func": info.is_http_func,
            "has_return": info.has_return,
        }
    print(json.dumps({"ok": True, "functions": functions, "heavy": loaded_heavy()}))
    """
)


def run_indexer(folder: Path, **env: str) -> tuple[int, dict[str, Any]]:
    done = subprocess.run(
        [sys.executable, "-c", INDEXER, str(folder), json.dumps(HEAVY)],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={k: v for k, v in {**os.environ, **env}.items() if v},
    )
    lines = done.stdout.strip().splitlines()
    assert lines, f"the indexer printed nothing (exit {done.returncode}); stderr:\n{done.stderr}"
    result: dict[str, Any] = json.loads(lines[-1])
    return done.returncode, result


def test_runtime_indexes_exactly_the_thirteen_functions_without_the_defender_stream() -> None:
    code, result = run_indexer(ROOT, DEFENDER_EVENTHUB_NAME="")

    assert code == 0, f"the Functions runtime refused function_app.py: {result}"
    functions = result["functions"]
    assert sorted(functions) == [
        "alerts", "alerts_o365", "doctor", "doctor_daily", "expand_content", "poll_alerts", "process_event",
        "restore_mailbox", "restricted_users", "sweep_restricted", "unblock_user", "user_status", "verify_unblock",
    ]  # fmt: skip

    assert functions["alerts_o365"]["raw_bindings"][0]["route"] == "alerts/o365"
    assert not functions["alerts_o365"]["is_async"]  # like alerts: the sync queue client
    assert functions["expand_content"]["raw_bindings"][0]["queueName"] == "alert-content"
    for timer in ("poll_alerts", "sweep_restricted"):
        [binding] = functions[timer]["raw_bindings"]
        assert (binding["type"], binding["schedule"], binding["useMonitor"]) == ("timerTrigger", "0 * * * * *", False)
    [doctor_timer] = functions["doctor_daily"]["raw_bindings"]
    assert (doctor_timer["schedule"], doctor_timer["runOnStartup"]) == ("0 */10 * * * *", False)

    alerts = functions["alerts"]
    assert alerts["raw_bindings"] == [
        {
            "direction": "IN",
            "type": "httpTrigger",
            "name": "req",
            "methods": ["POST"],
            "authLevel": "FUNCTION",
            "route": "alerts",
        },
        {"direction": "OUT", "type": "http", "name": "$return"},
    ]
    assert alerts["bindings"] == {
        "req": {"type": "httpTrigger", "direction": 0},
        "$return": {"type": "http", "direction": 1},
    }
    assert alerts["is_http_func"]
    assert alerts["has_return"]
    assert not alerts[
        "is_async"
    ]  # the queue client it calls blocks: an async handler would stall the worker's event loop

    process_event = functions["process_event"]
    assert process_event["raw_bindings"] == [
        {
            "direction": "IN",
            "type": "queueTrigger",
            "name": "msg",
            "queueName": "restriction-events",
            "connection": "AzureWebJobsStorage",
        }
    ]
    assert process_event["is_async"]
    assert not process_event["is_http_func"]
    assert not process_event["has_return"]

    assert functions["verify_unblock"]["raw_bindings"] == [
        {
            "direction": "IN",
            "type": "queueTrigger",
            "name": "msg",
            "queueName": "restriction-verify",
            "connection": "AzureWebJobsStorage",
        }
    ]
    admin_routes = {
        name: (functions[name]["raw_bindings"][0]["route"], functions[name]["raw_bindings"][0]["methods"])
        for name in ("unblock_user", "user_status", "restricted_users", "doctor")
    }
    assert admin_routes == {
        "doctor": ("doctor", ["GET"]),
        "unblock_user": ("users/{upn}/unblock", ["POST"]),
        "user_status": ("users/{upn}", ["GET"]),
        "restricted_users": ("restricted", ["GET"]),
    }
    for name in admin_routes:
        assert functions[name]["raw_bindings"][0]["authLevel"] == "FUNCTION"  # plus the Entra token, checked inside
        assert functions[name]["is_async"]

    for function in functions.values():
        assert function["script_file"] == "function_app.py"
        assert not function["retry"]

    assert result["heavy"] == [], f"indexing imported heavy modules: {result['heavy']}"


def test_the_defender_stream_is_indexed_with_its_event_hub_when_configured() -> None:
    code, result = run_indexer(
        ROOT, DEFENDER_EVENTHUB_NAME="defender-alerts", DEFENDER_EVENTHUB_CONSUMER_GROUP="responder"
    )

    assert code == 0, f"the Functions runtime refused function_app.py: {result}"
    stream = result["functions"]["defender_stream"]
    assert stream["raw_bindings"] == [
        {
            "direction": "IN",
            "type": "eventHubTrigger",
            "name": "events",
            "connection": "DEFENDER_EVENTHUB",
            "eventHubName": "defender-alerts",
            "cardinality": "MANY",
            "consumerGroup": "responder",
        }
    ]
    assert stream["is_async"]
    assert stream["retry"]  # the Event Hubs trigger checkpoints failed batches: the function retries them first
    assert result["heavy"] == []


BROKEN_APP = """
import azure.functions as func

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)


@app.route(route="alerts", methods=["POST"])
def alerts(req: func.HttpRequest, tenant: str) -> func.HttpResponse:
    return func.HttpResponse(tenant)
"""


def test_runtime_indexer_refuses_a_parameter_without_a_binding(tmp_path: Path) -> None:
    (tmp_path / "function_app.py").write_text(BROKEN_APP, encoding="utf-8")

    code, result = run_indexer(tmp_path)

    assert code == 1
    assert result["ok"] is False
    # get_functions() (the SDK's own indexing) accepted it: only the runtime's loader catches this.
    assert result["stage"] == "process_indexed_function"
    assert result["error"] == "FunctionLoadError"
    assert "'tenant'" in result["message"]
    assert "not in the function definition" in result["message"]


def test_importing_function_app_imports_no_heavy_module() -> None:
    probe = (
        "import sys, json\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "import function_app\n"
        f"heavy = {HEAVY!r}\n"
        "print(json.dumps(sorted(m for m in sys.modules if any(m == h or m.startswith(h + '.') for h in heavy))))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )

    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []
