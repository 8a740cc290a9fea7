"""The window's dialogs: Settings (the session's values as they are now; only what the user changed is sent), the
prompt's Preview, and a reply's thinking opened in full."""
from __future__ import annotations

from PySide6.QtWidgets import (QComboBox, QDialog, QDialogButtonBox, QFormLayout, QLabel, QLineEdit, QPlainTextEdit,
                               QVBoxLayout, QWidget)

CONTINUE_STYLES = ("", "vllm", "prefill", "prefix", "none")  # "": CHATTER_CONTINUE_STYLE's
STREAM_CHOICES = ("", "on", "off")  # "": the server's default (CHATTER_STREAM)


def current_values(settings) -> dict[str, str]:
    """A session's settings (``answers.SessionSettings``) as the dialog's fields show them."""
    params = settings.params or {}
    return {"model": settings.model or "", "temperature": _shown(params.get("temperature")),
            "max_tokens": _shown(params.get("max_tokens")), "max_input_tokens": _shown(settings.max_input_tokens),
            "system": settings.system or "",
            "stream": "" if settings.stream is None else ("on" if settings.stream else "off"),
            "continue_style": settings.continue_style or ""}


def _shown(value) -> str:
    return "" if value is None else str(value)


def changed_fields(before: dict[str, str], after: dict[str, str]) -> dict:
    """What to send ``ConfigureSession``: only the fields the user changed (an untouched one, ``stream`` above all,
    is never sent back as it was shown), as ``Client.configure`` takes them. A cleared number unsets it; a bad one
    raises ``ValueError`` naming it."""
    update: dict = {}
    params: dict = {}
    for name, value in after.items():
        value = value.strip()
        if value == before.get(name, "").strip():
            continue
        if name in ("temperature", "max_tokens"):
            try:
                params[name] = None if not value else (float(value) if name == "temperature" else int(value))
            except ValueError:
                raise ValueError(f"{name.replace('_', ' ')} must be a number, got {value!r}") from None
        elif name == "stream":
            params["stream"] = None if not value else value == "on"
        elif name == "continue_style":
            params["continue_style"] = value or None
        elif name == "max_input_tokens":
            try:
                update[name] = int(value) if value else 0  # 0: the default budget
            except ValueError:
                raise ValueError(f"the input budget must be a whole number, got {value!r}") from None
        else:  # model, system: "" clears the session's own
            update[name] = value
    if params:
        update["params"] = params
    return update


class SettingsDialog(QDialog):
    """The session's settings, filled with its values now."""

    def __init__(self, parent: QWidget, settings) -> None:
        super().__init__(parent)
        self.setWindowTitle("Session settings (from the next reply on)")
        self.before = current_values(settings)
        form = QFormLayout(self)
        self.fields: dict[str, QLineEdit | QComboBox] = {}
        for name in ("model", "temperature", "max_tokens", "max_input_tokens", "system"):
            edit = QLineEdit(self.before[name])
            edit.setPlaceholderText("the server's default" if name in ("temperature", "max_tokens") else "")
            self.fields[name] = edit
            form.addRow(name.replace("_", " "), edit)
        for name, choices in (("stream", STREAM_CHOICES), ("continue_style", CONTINUE_STYLES)):
            box = QComboBox()
            box.addItems([choice or "default" for choice in choices])
            box.setCurrentIndex(choices.index(self.before[name]) if self.before[name] in choices else 0)
            self.fields[name] = box
            form.addRow(name.replace("_", " "), box)
        buttons = QDialogButtonBox(QDialogButtonBox.Ok | QDialogButtonBox.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        form.addRow(buttons)

    def values(self) -> dict[str, str]:
        out = {}
        for name, field in self.fields.items():
            if isinstance(field, QComboBox):
                out[name] = "" if field.currentText() == "default" else field.currentText()
            else:
                out[name] = field.text()
        return out

    def update(self) -> dict:
        return changed_fields(self.before, self.values())


def preview_dialog(parent: QWidget, preview) -> QDialog:
    dialog = QDialog(parent)
    dialog.setWindowTitle(f"Prompt of {preview.message_id}")
    layout = QVBoxLayout(dialog)
    notes = [f"model {preview.model}, sha256 {preview.prompt_hash}"]
    if preview.dropped_count:
        notes.append(f"left out to fit the input budget: {preview.dropped_count} older messages")
    if preview.thinking_left_out:
        notes.append(f"the thinking of {preview.thinking_left_out} earlier replies is left out")
    layout.addWidget(QLabel("\n".join(notes)))
    text = QPlainTextEdit(preview.preview)
    text.setReadOnly(True)
    layout.addWidget(text)
    dialog.resize(700, 500)
    return dialog


def text_dialog(parent: QWidget, title: str, text: str) -> QDialog:
    dialog = QDialog(parent)
    dialog.setWindowTitle(title)
    layout = QVBoxLayout(dialog)
    view = QPlainTextEdit(text)
    view.setReadOnly(True)
    layout.addWidget(view)
    dialog.resize(700, 450)
    return dialog
