"""``chatter gui``: a Qt window over the same protocol as the CLI, built as the seed app is: a worker thread
(``worker.py``) produces the stream, the main window (``window.py``) renders it (``markup.py``), the persister
(on the server) keeps it.

- All socket I/O runs on one ``QThread`` (``Worker``) with the CLI's own ``Client`` and ``ReplyView``: the
  Clone catch-up, offsets and cancel rule are the library's, written once. The worker emits Qt signals;
  only the GUI thread touches widgets (``Window._on_gui_thread`` asserts it in the debug mode,
  ``CHATTER_GUI_DEBUG=1``).
- Repaints are coalesced: text is gathered as it arrives and drawn at most ``REPAINTS_PER_S`` times a second.
  Finished Markdown blocks go into the transcript once; only the block being written is drawn again.
- ``chatter gui --send TEXT --screenshot PNG --quit-after-reply`` sends one message, saves the window when the
  reply ends, and exits as ``send`` does; it works offscreen (``QT_QPA_PLATFORM=offscreen``).
"""
from __future__ import annotations

import os
import sys

from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QApplication

from clients.gui.window import REPAINTS_PER_S, Window  # noqa: F401 (what the tests and the bench take from here)
from clients.output import EXIT_ERROR, exit_code


# Qt's xcb platform plugin needs these X libraries, which a minimal desktop lacks; without them Qt prints a plugin
# error and aborts. The library each package holds, as ctypes finds it.
XCB_PACKAGES = {"xcb-cursor": "libxcb-cursor0", "xcb-icccm": "libxcb-icccm4", "xcb-keysyms": "libxcb-keysyms1"}
# fonts that have the glyphs a default desktop font lacks (Chinese, Japanese, Korean, emoji), tried in order after
# it (an emoji font last: it has digits too, as keycaps)
FALLBACK_FONTS = ("Noto Sans CJK SC", "Noto Sans CJK JP", "Noto Serif CJK SC", "WenQuanYi Zen Hei",
                  "Droid Sans Fallback", "Noto Color Emoji", "Noto Emoji")


def missing_x_libraries(env=os.environ, find=None) -> list[str]:
    """The packages Qt's xcb plugin needs that are not installed, when the window would open on an X server (a
    DISPLAY, and no other platform chosen); [] otherwise."""
    import ctypes.util
    find = find or ctypes.util.find_library
    platform = env.get("QT_QPA_PLATFORM", "")
    if not env.get("DISPLAY") or (platform and not platform.startswith("xcb")) or (
            not platform and env.get("WAYLAND_DISPLAY")):
        return []
    return [package for library, package in XCB_PACKAGES.items() if find(library) is None]


def add_font_fallbacks(app: QApplication) -> list[str]:
    """Emoji and CJK text drawn with the fonts installed for them rather than as boxes: the window's font is its
    family first, then each of FALLBACK_FONTS present. Returns those found."""
    from PySide6.QtGui import QFontDatabase, QFontInfo
    present = set(QFontDatabase.families())
    found = [family for family in FALLBACK_FONTS if family in present]
    if found:
        font = app.font()
        font.setFamilies([QFontInfo(font).family(), *found])
        app.setFont(font)
    return found


def main(args) -> int:
    missing = missing_x_libraries()
    if missing:
        print(f"chatter gui: Qt needs {', '.join(missing)} to open a window on this X display: "
              f"sudo apt-get install {' '.join(missing)} (or run offscreen: QT_QPA_PLATFORM=offscreen)",
              file=sys.stderr)
        return EXIT_ERROR
    app = QApplication.instance() or QApplication(sys.argv[:1])
    add_font_fallbacks(app)
    window = Window(args.session)
    window.show()
    code = {"exit": 0}
    if args.send:
        if args.screenshot_live:
            window.on_repaint = lambda: _live_shot(window, args.screenshot_live)

        def ended(outcome: dict) -> None:
            if args.screenshot:
                window.grab().save(args.screenshot)
            code["exit"] = exit_code(outcome["status"], outcome.get("saved", True)) if outcome.get("status") else EXIT_ERROR
            if args.quit_after_reply:
                QTimer.singleShot(0, window.close)
                QTimer.singleShot(0, app.quit)

        window.on_reply_end = ended
        window.send_when_open = args.send  # sent once the session's history is shown (show_history)
        if args.session is None:
            window.ask("new", None)
    app.exec()
    # the worker has closed its client and its thread has ended (closeEvent): nothing is left to tear down, so
    # leave at once, before the interpreter finalizes Qt's objects (where PySide6 6.12.0 aborted: pyproject.toml)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code["exit"])


LIVE_SHOT_CHARS = 400


def _live_shot(window: Window, path: str) -> None:
    """``--screenshot-live``: the window once the reply under way has shown this much."""
    parts = window.shown_parts.get(window.generation_id or "", [])
    if window.generation_id and sum(map(len, parts)) >= LIVE_SHOT_CHARS:
        window.grab().save(path)
        window.on_repaint = None
