"""System packages the tests need (PostgreSQL, Chromium, fonts), installed with Debian's apt-get when they are
missing, as root: a fresh machine needs nothing installed by hand."""
from __future__ import annotations

import os
import shutil
import subprocess

_updated = False


def apt_install(*packages: str, timeout: float = 1200) -> bool:
    """``apt-get install`` the packages (after one ``apt-get update`` a run); False when this cannot be done here
    (not root, or no apt-get), and the caller says what is missing."""
    global _updated
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return False
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    if not _updated:
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, timeout=600)
        _updated = True
    subprocess.run(["apt-get", "install", "-y", "-q", *packages], env=env,
                   capture_output=True, timeout=timeout)
    return True


FONT_PACKAGES = ("fonts-noto-color-emoji", "fonts-noto-cjk")  # emoji, and Chinese, Japanese and Korean text


def font_families() -> str:
    """fontconfig's list of installed families ("" without fontconfig)."""
    if not shutil.which("fc-list"):
        return ""
    return subprocess.run(["fc-list", ":", "family"], capture_output=True, text=True, timeout=60).stdout


def ensure_fonts() -> str:
    """Fonts for emoji and CJK text, installed when missing (the screenshots show them rather than boxes); the
    families installed after."""
    families = font_families()
    if "Noto Color Emoji" not in families or "Noto Sans CJK" not in families:
        apt_install(*FONT_PACKAGES, timeout=1800)
        families = font_families()
    return families
