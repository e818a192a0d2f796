"""Every setting of ``mint serve``, ``mint train``, ``mint app`` and ``mint optimize``, declared
once: name, type, default and help live in the tables below and nowhere else.

The command line is generated from these tables (``_cli_common.command_from``), so is
``docs/settings.md`` (``python -m modelmint._settings > docs/settings.md``), and the ports and
size limits other modules need are the named constants, imported rather than repeated.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MIB = 1024 * 1024
GIB = 1024 * MIB

DEFAULT_HOST = "127.0.0.1"
DEFAULT_HTTP_PORT = 8000
DEFAULT_GRPC_PORT = 8001
DEFAULT_METRICS_PORT = 8002
DEFAULT_APP_PORT = 8080
DEFAULT_MAX_REQUEST_BYTES = 16 * MIB
DEFAULT_DECODE_MEMORY = 512 * MIB
DEFAULT_DECODE_THREADS = 2
DEFAULT_READ_TIMEOUT_S = 60.0
DEFAULT_UPLOAD_MAX_BYTES = 2 * GIB
DEFAULT_ZIP_MAX_ENTRIES = 100_000
DEFAULT_ZIP_MAX_UNCOMPRESSED_BYTES = 10 * GIB
DEFAULT_ZIP_MAX_RATIO = 100.0


@dataclass(frozen=True)
class Setting:
    """One command-line setting. ``type`` is the type of one value: a setting whose default is
    None may also be left unset, a ``repeatable`` one collects a list."""

    name: str  # the key its value has in the command's dict
    type: type
    default: Any
    help: str
    flag: str | None = None  # the option's spelling when it is not --name-with-dashes
    argument: bool = False  # positional instead of an option
    required: bool = False
    repeatable: bool = False
    min: float | None = None
    max: float | None = None

    @property
    def option(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")


SERVE: tuple[Setting, ...] = (
    Setting("repo", str, None,
            "Model repository to serve: a folder or s3://BUCKET/PREFIX (cached locally, see "
            "docs/object-storage.md).", argument=True, required=True),
    Setting("host", str, DEFAULT_HOST, "Address to bind."),
    Setting("http_port", int, DEFAULT_HTTP_PORT, "KServe V2 HTTP port (0: any free port)."),
    Setting("grpc_port", int, DEFAULT_GRPC_PORT,
            "KServe V2 gRPC port (0: any free port; -1: no gRPC).", min=-1),
    Setting("metrics_port", int, DEFAULT_METRICS_PORT,
            "Prometheus /metrics port (0: any free port; -1: none).", min=-1),
    Setting("max_request_bytes", int, DEFAULT_MAX_REQUEST_BYTES,
            "Largest request body (HTTP) or message (gRPC) accepted."),
    Setting("decode_memory", int, DEFAULT_DECODE_MEMORY,
            "Memory, in bytes, that the image and sound decodes in flight share. Each input's "
            "need is estimated from its header (pixels x bytes per pixel x working copies); "
            "one that needs more is refused with a 400 before decoding, the others wait their "
            "turn.", min=16 * MIB),
    Setting("decode_threads", int, DEFAULT_DECODE_THREADS,
            "Threads that decode and preprocess requests, whatever the number of cores: the "
            "model's own threads do the heavy work.", min=1),
    Setting("poll", float, 0.0,
            "Re-read the repository every SECONDS and hot-update changed models (0: only via "
            "POST /v2/repository/models/NAME/load).", min=0),
    Setting("token_file", Path, None,
            "Access token file (created with a new token, mode 0600, if missing): the "
            "repository API then needs 'Authorization: Bearer TOKEN'. Required off loopback."),
    Setting("require_token_for_inference", bool, False,
            "Also require the token for inference and metadata (health and readiness stay "
            "open)."),
    Setting("insecure_no_token", bool, False,
            "Serve off loopback without a token: anyone who can reach the server may load and "
            "unload models."),
    Setting("allowed_host", str, None,
            "Another name clients may use in the Host header (repeatable; '*': any). Loopback "
            "names, IP addresses and --host are always accepted.", repeatable=True),
    Setting("read_timeout", float, DEFAULT_READ_TIMEOUT_S,
            "Seconds a client has to send a request's headers, and again its body; slower "
            "HTTP requests get 408 and the connection closes (gRPC: the connection "
            "handshake).", min=0.1),
    Setting("log_level", str, "warning",
            "Level of the server's own log: debug, info, warning or error. At info each "
            "version's load and unload is logged phase by phase with its times and CPU "
            "(docs/serving.md). Requests are never logged one by one."),
    Setting("ray", str, None,
            "Serve through Ray Serve on this Ray cluster (ADDRESS: 'auto' or HOST:PORT): "
            "--replicas replicas behind Ray Serve's ingress on --host/--http-port and "
            "--grpc-port, new versions rolled out replica by replica (docs/deploy.md); no "
            "metrics port."),
    Setting("replicas", int, 2, "With --ray: how many replicas serve the repository.", min=1),
)

TRAIN: tuple[Setting, ...] = (
    Setting("data", Path, None,
            "Data folder (<class>/* or train|val/<class>/*; images or .wav) or a .tsv/.csv "
            "file (text)", argument=True),
    Setting("name", str, None, "Model name in the repository."),
    Setting("repo", str, "models", "Model repository: a folder or s3://BUCKET/PREFIX."),
    Setting("budget", float, None, "Wall-clock ceiling in seconds for the whole command."),
    Setting("epochs", int, None, "Fixed number of fine-tuning epochs instead of a budget."),
    Setting("seed", int, 0, "Seed for the split, shuffling and init."),
    Setting("strict", bool, False, "Skip every file the data check flags."),
    Setting("runs_dir", Path, Path("runs"), "Where run directories go."),
    Setting("resume", Path, None, "Continue an interrupted run directory."),
    Setting("json", bool, False, "End with one JSON object.", flag="--json"),
    Setting("group_by", str, None,
            "Regex over file names (first group, e.g. '_(\\[a-z]+)_'): keep each group on one "
            "side of the train/val split."),
    Setting("reject_dir", Path, None,
            "Folder of out-of-domain examples: adds an 'other' class."),
    Setting("label_column", str, None,
            "Text tasks: the label column (default: auto-detected)."),
    Setting("text_column", str, None, "Text tasks: the text column (default: auto-detected)."),
    Setting("storage", str, None,
            "Study database shared by workers, e.g. postgresql://user@host/db (default: SQLite "
            "in the run directory)."),
    Setting("worker", bool, False,
            "Only run trials of the shared --storage study; publish nothing."),
    Setting("ray", str, None, "Run trials on this Ray cluster (ADDRESS, e.g. 127.0.0.1:6379)."),
    Setting("max_trials", int, None,
            "Stop the search after this many trials (default: only the budget)."),
    Setting("candidates", str, None,
            "Only these candidates (glob over names, e.g. 'mobilenet_v2/*'; repeatable).",
            repeatable=True),
    Setting("profile", bool, False,
            "Profile training (image data): torch.profiler window, advice, "
            "RUN/trials/NNN/profile/report.html."),
    Setting("auto_tune", bool, False,
            "Tune the image input pipeline on this data first (docs/profile.md)."),
)

APP: tuple[Setting, ...] = (
    Setting("data_dir", Path, Path("~/.modelmint"),
            "Where projects, uploads, runs, models and the SQLite database live."),
    Setting("database", str, None,
            "SQLAlchemy URL, e.g. postgresql://user@host/db (default: SQLite in --data-dir)."),
    Setting("host", str, DEFAULT_HOST,
            "Address to bind; anything but loopback requires the access token."),
    Setting("allowed_hosts", str, None,
            "Another name clients may use in the Host header (repeatable; '*': any). Loopback "
            "names, IP addresses and --host are always accepted; other names are refused "
            "(DNS rebinding).", flag="--allowed-host", repeatable=True),
    Setting("port", int, DEFAULT_APP_PORT, "HTTP port of the app."),
    Setting("repo", str, None,
            "Model repository trained versions are published to: a folder or s3://BUCKET/PREFIX "
            "(default: DATA_DIR/models; see docs/object-storage.md)."),
    Setting("serve_url", str, None,
            "Use this running `mint serve DATA_DIR/serving` instead of starting one."),
    Setting("upload_max_bytes", int, DEFAULT_UPLOAD_MAX_BYTES,
            "Largest single upload (a zip or a file), bytes."),
    Setting("zip_max_entries", int, DEFAULT_ZIP_MAX_ENTRIES, "Most entries in one zip."),
    Setting("zip_max_uncompressed", int, DEFAULT_ZIP_MAX_UNCOMPRESSED_BYTES,
            "Largest total uncompressed size of one zip, bytes."),
    Setting("zip_max_ratio", float, DEFAULT_ZIP_MAX_RATIO,
            "Largest compression ratio (uncompressed / compressed) of a zip or an entry (zip "
            "bomb guard)."),
)

OPTIMIZE: tuple[Setting, ...] = (
    Setting("model_dir", str, None,
            "REPO/<model> (its latest version) or REPO/<model>/<version>; REPO a folder or "
            "s3://BUCKET/PREFIX.", argument=True, required=True),
    Setting("max_accuracy_drop", float, 1.0,
            "Largest drop, in points, a lower precision may cost: val top-1 accuracy for a "
            "classifier, mAP@.5 (x100) for an object detector."),
    Setting("rounds", int, 5, "Interleaved timing rounds.", min=1),
    Setting("iters", int, 5, "Timed calls per candidate, batch and round.", min=1),
    Setting("include_compile", bool, False, "Also measure torch.compile (slow to compile)."),
    Setting("max_items", int, None,
            "Gate on at most N of the version's labelled items (evenly spaced); unset: all. "
            "Bounds the time a large text table's gate takes.", min=1),
    Setting("json", bool, False, "End with one JSON object.", flag="--json"),
)

COMMANDS: dict[str, tuple[Setting, ...]] = {
    "serve": SERVE, "train": TRAIN, "app": APP, "optimize": OPTIMIZE}


def default(table: tuple[Setting, ...], name: str) -> Any:
    """The default of setting ``name`` in ``table``."""
    for setting in table:
        if setting.name == name:
            return setting.default
    raise KeyError(name)


# --- docs/settings.md ----------------------------------------------------------------------

_TYPE_NAMES = {str: "text", int: "integer", float: "number", bool: "flag", Path: "path"}


def _type_text(setting: Setting) -> str:
    text = _TYPE_NAMES[setting.type]
    return f"{text}, repeatable" if setting.repeatable else text


def _default_text(setting: Setting) -> str:
    if setting.required:
        return "required"
    value = setting.default
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, int) and value >= MIB and value % MIB == 0:
        unit, size = ("GiB", value // GIB) if value % GIB == 0 else ("MiB", value // MIB)
        return f"`{value}` ({size} {unit})"
    return f"`{value}`"


def _cell(text: str) -> str:
    """Help text as one Markdown table cell, shown literally outside its `code` spans."""
    # Help is written for the terminal, where Rich markup needs "\[" for a literal "[".
    parts = text.replace("\\[", "[").split("`")
    for i in range(0, len(parts), 2):  # the even parts lie outside code spans
        for char in "\\*_<[":
            parts[i] = parts[i].replace(char, "\\" + char)
    return "`".join(parts).replace("|", "\\|")


def render_markdown() -> str:
    """``docs/settings.md``: one table per command."""
    lines = ["# Settings", "",
             "Every setting of `mint serve`, `mint train`, `mint app` and `mint optimize`. This",
             "file is generated from `src/modelmint/_settings.py`; after changing a setting,",
             "regenerate it with:", "",
             "```", ".venv/bin/python -m modelmint._settings > docs/settings.md", "```"]
    for command, table in COMMANDS.items():
        lines += ["", f"## mint {command}", "",
                  "| setting | type | default | help |", "|---|---|---|---|"]
        for s in table:
            spelling = s.name.upper() if s.argument else s.option
            lines.append(f"| `{spelling}` | {_type_text(s)} | {_default_text(s)} "
                         f"| {_cell(s.help)} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render_markdown())
