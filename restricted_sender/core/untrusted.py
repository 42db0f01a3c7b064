"""One rule for every value an outsider can choose (rule names, display names, alert titles and ids, addresses,
a justification), on every channel a person reads: tickets, mail and logs.

A value is shown as one line of text: characters of Unicode categories Cc (CR, LF, TAB, ESC, ...), Zl and Zp
(U+2028, U+2029: many renderers and log viewers start a line at them) and Cf (bidi overrides and isolates,
zero-width spaces, the soft hyphen, tag characters: they reorder or hide text) become a space. Only the two
joiners U+200C and U+200D are kept: they hide nothing and some scripts and emoji need them. So no value can
start a line of its own: a forged "What was done:" section, a forged "[x] done" step or a forged log line.
https://www.unicode.org/reports/tr9/ (bidi controls), https://www.unicode.org/reports/tr36/ (security).

The markup of each target system is neutralized where that system's body is assembled: HTML is escaped
(``ticket_body``), ServiceNow's ``[code]`` tag is broken (:func:`no_codetag`), Jira gets ADF text nodes, which
carry no markup. Links are rendered only to the hosts in :data:`LINK_HOSTS`.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from urllib.parse import urlsplit

_KEPT_FORMAT = frozenset("\u200c\u200d")
_HIDING = frozenset(("Cc", "Zl", "Zp", "Cf"))
# ServiceNow renders [code]...[/code] in journal fields (work notes, comments) as HTML when the instance property
# glide.ui.security.allow_codetag is on: broken here, whatever the instance's setting.
_CODE_TAG = re.compile(r"\[(\s*/?\s*code\s*)\]", re.IGNORECASE)
# The Microsoft portals an alert's link may point at; any other link is shown as text, defanged, never linked.
# Defender portal (commercial and GCC, GCC High, DoD): https://learn.microsoft.com/defender-endpoint/gov#portal-urls ;
# Sentinel and Azure: portal.azure.com (.us for Azure Government); Purview: purview.microsoft.com,
# compliance.microsoft.com; Microsoft Learn for the product's own references.
LINK_HOSTS = frozenset(
    {
        "security.microsoft.com",
        "security.microsoft.us",
        "security.apps.mil",
        "portal.azure.com",
        "portal.azure.us",
        "purview.microsoft.com",
        "compliance.microsoft.com",
        "learn.microsoft.com",
    }
)
MAX_URL_CHARS = 2_000


def _hides(char: str) -> bool:
    return unicodedata.category(char) in _HIDING and char not in _KEPT_FORMAT


def one_line(value: object) -> str:
    """``value`` as one line of text: ``None`` is empty; the characters above become spaces."""
    if value is None:
        return ""
    text = value if isinstance(value, str) else str(value)
    if text.isprintable():  # the common case; isprintable() is False for every category replaced
        return text
    return "".join(" " if _hides(c) else c for c in text)


def no_codetag(text: str) -> str:
    """``text`` with ServiceNow's ``[code]`` and ``[/code]`` (any case or spacing) shown as ``(code)``."""
    return _CODE_TAG.sub(r"(\1)", text)


def linkable(url: str) -> bool:
    """An https link to one of the Microsoft portals (:data:`LINK_HOSTS`), of a sane length, without userinfo."""
    if len(url) > MAX_URL_CHARS or url != one_line(url) or " " in url:
        return False
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return False
    return (
        parts.scheme.lower() == "https"
        and "@" not in parts.netloc
        and port in (None, 443)
        and (parts.hostname or "") in LINK_HOSTS
    )


def defanged(url: str) -> str:
    """A link shown as text that no ticket system or mail client turns back into a link: ``hxxps[:]//evil[.]com``."""
    text = one_line(url)
    if text[:4].lower() == "http":
        text = "hxxp" + text[4:]
    return text.replace(":", "[:]", 1).replace(".", "[.]")


class OneLineLogs(logging.Filter):
    """Renders each record's message and cleans it with :func:`one_line`, so no argument starts a log line.

    Installed on the package's loggers (``restricted_sender/__init__.py``): every ``log.x("... %s", value)`` of the
    package passes through it, whatever the handler the host attaches.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = one_line(message)
        if cleaned != message:  # else the record keeps its template and arguments (telemetry groups by them)
            record.msg, record.args = cleaned, None
        return True


LOG_FILTER = OneLineLogs()

_QUERY_VALUE = re.compile(r"([?&][^=&\s\"'#]+=)[^&\s\"'#]+")


class NoQueryValues(logging.Filter):
    """Masks every query value in a record's message. On httpx's logger: it logs each request's full URL at INFO,
    and a Logic App / Power Automate webhook or a function URL carries its key there (``sig=``, ``code=``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = _QUERY_VALUE.sub(r"\1***", message)
        if masked != message:
            record.msg, record.args = masked, None
        return True


QUERY_FILTER = NoQueryValues()


def guard_logger(name: str) -> logging.Logger:
    """The logger ``name`` with :class:`OneLineLogs` on it (once)."""
    logger = logging.getLogger(name)
    if LOG_FILTER not in logger.filters:
        logger.addFilter(LOG_FILTER)
    return logger
