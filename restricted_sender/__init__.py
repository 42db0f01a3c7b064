import logging

from restricted_sender.core.untrusted import QUERY_FILTER, guard_logger

# Every logger of the package cleans its messages (untrusted.OneLineLogs): no logged value starts a line. A filter
# on a parent logger does not see its children's records, so each module takes its own with
# ``guard_logger(__name__)``; these two are the package's and the decision line's (a documented logger name).
for _name in ("restricted_sender", "restricted_sender.decision"):
    guard_logger(_name)
# httpx logs every request's URL, query and all: a webhook's key must not reach the logs with it.
if QUERY_FILTER not in logging.getLogger("httpx").filters:
    logging.getLogger("httpx").addFilter(QUERY_FILTER)
