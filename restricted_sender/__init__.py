from .untrusted import guard_logger

# Every logger of the package cleans its messages (untrusted.OneLineLogs): no logged value starts a line.
for _name in ("restricted_sender", "restricted_sender.decision"):
    guard_logger(_name)
