"""Structured (JSON-lines) logging with a filter that keeps PHI out of every record.

The guarantee is structural: the service never passes datasets to the logger, and :class:`PhiFilter`, installed
on the root handler, (1) replaces any pydicom ``Dataset``/``DataElement`` or raw bytes argument with a placeholder
and (2) redacts text that looks like a patient-module element (group 0010) or ``Patient...=value`` pairs, in the
message and in formatted tracebacks. Client file names go through :func:`sanitize_filename` before they are logged.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from typing import Any

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset

REDACTED = "[redacted]"
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")
_PATIENT_ELEMENT = re.compile(r"\(0010,\s*[0-9A-Fa-f]{4}\)[^\n]*")
_PATIENT_PAIR = re.compile(r"(Patient\w*|OtherPatient\w*)(\s*[=:]\s*)('[^']*'|\"[^\"]*\"|[^\s,;)]+)")
# pydicom quotes the offending value when it warns or raises about one (any element's, patient ones included)
_PYDICOM_VALUE = re.compile(
    r"(Invalid value for VR \w+: |Unable to convert (?:non-conformant value )?)('[^'\n]*'|\"[^\"\n]*\"|\S+)"
)
# highdicom quotes a person name it finds unlikely (a single component, such as "John Smith")
_HIGHDICOM_NAME = re.compile(r'(The string )"[^"\n]*"( is unlikely to represent the intended person name)')
_STD_ATTRS = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


def sanitize_filename(name: str | None, max_len: int = 64) -> str:
    """A client-supplied file name reduced to a safe base name (no path, no control characters, bounded)."""
    if not name:
        return ""
    base = re.split(r"[\\/]", name)[-1]
    return _SAFE_NAME.sub("_", base)[:max_len]


def redact(text: str) -> str:
    """Remove text that looks like patient-identifying DICOM content."""
    text = _PATIENT_ELEMENT.sub("(0010,xxxx) " + REDACTED, text)
    text = _PYDICOM_VALUE.sub(lambda m: m.group(1) + REDACTED, text)
    text = _HIGHDICOM_NAME.sub(lambda m: m.group(1) + REDACTED + m.group(2), text)
    return _PATIENT_PAIR.sub(lambda m: m.group(1) + m.group(2) + REDACTED, text)


def _scrub(value: Any) -> Any:
    if isinstance(value, (Dataset, DataElement)):
        return f"<{type(value).__name__} {REDACTED}>"
    if isinstance(value, (bytes, bytearray, memoryview)):
        return f"<{len(value)} bytes>"
    if isinstance(value, str):
        return redact(value)
    return value


class PhiFilter(logging.Filter):
    """Scrub datasets, raw bytes and patient-looking text from a record before any handler formats it."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, dict):
            record.args = {k: _scrub(v) for k, v in record.args.items()}
        elif record.args:
            record.args = tuple(_scrub(a) for a in record.args)
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # a broken format string: leave it for the handler to report
            record.msg = _scrub(record.msg)
        else:  # redact the formatted text, so values split across format and arguments are caught too
            record.msg, record.args = redact(message), None
        for key, value in list(vars(record).items()):
            if key not in _STD_ATTRS:
                setattr(record, key, _scrub(value))
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, extra fields, redacted traceback."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": redact(record.getMessage()),
        }
        for key, value in vars(record).items():
            if key not in _STD_ATTRS:
                entry[key] = value if isinstance(value, (int, float, bool, type(None))) else redact(str(value))
        if record.exc_info:
            entry["exception"] = redact(self.formatException(record.exc_info))
        return json.dumps(entry, ensure_ascii=False)


def _install_record_factory() -> None:
    """Scrub every record when it is created, so that any handler (tests' capture included) sees it clean."""
    current = logging.getLogRecordFactory()
    if getattr(current, "_radinfer", False):
        return
    phi_filter = PhiFilter()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = current(*args, **kwargs)
        phi_filter.filter(record)
        return record

    factory._radinfer = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)


def configure_logging(level: str = "INFO") -> None:
    """Send JSON lines to stderr with the PHI filter; uvicorn's loggers go through the same handler."""
    _install_record_factory()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(PhiFilter())
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_radinfer", False)]:
        root.removeHandler(old)
    handler._radinfer = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    # Python warnings (e.g. MONAI's FutureWarnings) become JSON records too, not plain lines in the log.
    logging.captureWarnings(True)
    # highdicom logs every attribute it copies from the source at INFO (about ten lines a job, with UIDs and the
    # names of patient attributes): its warnings are kept, its chatter is not.
    quiet = logging.getLogger("highdicom")
    if quiet.level == logging.NOTSET:
        quiet.setLevel(logging.WARNING)
    # pydicom logs each decoder plugin that fails on a bad file as an ERROR with its traceback; the job reports
    # the failure itself (a DecodeError naming the file), so a client's corrupt file raises no operator alarm.
    plugins = logging.getLogger("pydicom.pixels.decoders.base")
    if plugins.level == logging.NOTSET:
        plugins.setLevel(logging.CRITICAL)
