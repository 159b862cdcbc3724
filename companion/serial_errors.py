"""Why a serial port failed, in words an operator can act on.

The GPS driver and the modem channel both open ports that vanish (USB unplug), belong to a
group the service user may lack, or are held by another program (ModemManager, gpsd); pyserial
hides the errno in the exception or its context, and a bare "[Errno 13]" helps nobody in the
field.
"""

from __future__ import annotations

import errno

_CAUSES = {
    errno.EACCES: "permission denied (is the user in the dialout group?)",
    errno.ENOENT: "no such device (unplugged?)",
    errno.EBUSY: "device busy (another program has it open)",
    errno.EIO: "I/O error (device unplugged?)",
}


def serial_cause(exc: BaseException) -> str:
    """The reason behind a serial error: the errno's meaning, else the exception's text."""
    err = getattr(exc, "errno", None)
    if err is None and exc.__context__ is not None:
        err = getattr(exc.__context__, "errno", None)
    return _CAUSES.get(err, "") or str(exc) or type(exc).__name__
