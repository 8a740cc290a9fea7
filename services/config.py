"""Settings read from the environment (and ``.env`` under honcho): one frozen dataclass per process, built by
its ``from_env``, every value checked for range at start. One table, documented in docs/CONFIGURATION.md."""
from __future__ import annotations

import os
from dataclasses import dataclass, field

from protocol.codec import MAX_FRAME_BYTES
from services.persister.core import ROTATE_ROWS

DAY_MS = 86_400_000
# a user message and the session's system prompt go in one frame to the persister (a message's row and its
# session's): each at most this many characters, 4 UTF-8 bytes each at worst, 3.2 MiB together
MAX_TEXT_CHARS_MOST = MAX_FRAME_BYTES // 10


def env_str(name: str, default: str) -> str:
    return os.environ.get(name) or default


def env_int(name: str, default: int, lo: int | None = 0, hi: int | None = None) -> int:
    """An integer setting, checked for range at start: a process that cannot run refuses to start, with
    one line that names the setting and what would be right."""
    return _env_number(name, default, int, "an integer", lo, hi)


def env_float(name: str, default: float, lo: float, hi: float) -> float:
    return _env_number(name, default, float, "a number", lo, hi)


def _env_number(name: str, default, convert, what: str, lo, hi):
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        value = convert(raw)
    except ValueError:
        raise SystemExit(f"{name} must be {what}, got {raw!r}") from None
    if (lo is not None and not value >= lo) or (hi is not None and not value <= hi):  # NaN fails too
        where = (f"from {_shown(lo)} to {_shown(hi)}" if hi is not None else f"at least {_shown(lo)}") \
            if lo is not None else f"at most {_shown(hi)}"
        raise SystemExit(f"{name} must be {where}, got {raw}")
    return value


def _shown(bound) -> str:
    return f"{bound:g}" if isinstance(bound, float) else str(bound)


TRUE_WORDS, FALSE_WORDS = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if not raw:
        return default
    word = raw.strip().lower()
    if word not in TRUE_WORDS + FALSE_WORDS:
        raise SystemExit(f"{name} must be one of {', '.join(TRUE_WORDS + FALSE_WORDS)}, got {raw!r}")
    return word in TRUE_WORDS


def env_choice(name: str, default: str, choices: tuple[str, ...]) -> str:
    value = (os.environ.get(name) or default).strip().lower()
    if value not in choices:
        raise SystemExit(f"{name} must be {', '.join(choices[:-1])} or {choices[-1]}, got {value!r}")
    return value


THINK_TAGS = ("auto", "on", "off")
PROMPT_THINKING = ("drop", "keep")
CONTINUE_STYLES = ("auto", "vllm", "prefill", "prefix", "none")  # see services/coordinator/prompt.py
# what the mock imitates (CHATTER_MOCK_SERVER): its /v1/models owned_by, and how it reads a trailing assistant
# message: vllm and llamacpp (prefilled, repeated first) and deepseek (prefix) continue it; openai and chatter
# answer it anew, as a finished turn, unless the request carries vLLM's fields or a prefix flag (chatter)
MOCK_SERVERS = ("chatter", "vllm", "llamacpp", "deepseek", "openai")


def database_url() -> str:
    return env_str("CHATTER_DATABASE_URL", "sqlite:///data/chatter.db")


def mock_port() -> int:
    return env_int("CHATTER_MOCK_PORT", 8700, lo=1, hi=65535)


def openai_base_url() -> str:
    return env_str("OPENAI_BASE_URL", f"http://127.0.0.1:{mock_port()}/v1")


def first_token_ms() -> int:
    """How long a reply may wait for its first token (coordinator and generator alike)."""
    return env_int("CHATTER_FIRST_TOKEN_MS", 600_000, lo=100, hi=DAY_MS)


def model_contexts() -> dict[str, int]:
    """CHATTER_MODEL_CONTEXT=MODEL=TOKENS[,MODEL=TOKENS...]: the context length of models whose server does not
    tell it."""
    raw = os.environ.get("CHATTER_MODEL_CONTEXT", "").strip()
    out = {}
    for pair in filter(None, (p.strip() for p in raw.split(","))):
        model, _, tokens = pair.rpartition("=")
        if not model or not tokens.isdigit() or not 1 <= int(tokens) < 2**31:
            raise SystemExit(f"CHATTER_MODEL_CONTEXT must be MODEL=TOKENS pairs separated by commas "
                             f"(llama3.1=8192,qwen2.5=32768), got {pair!r}")
        out[model.strip()] = int(tokens)
    return out


def default_model() -> str:
    return env_str("CHATTER_MODEL", "mock-1")


def wake_ms() -> int:
    """The longest period of a paced loop (coordinator and generator; ``pacing.Pacer``): a lightly loaded one
    wakes at most once in this many ms, a busier one sooner."""
    return env_int("CHATTER_WAKE_MS", 20, lo=0, hi=100)


def tiktoken_encoding() -> str:
    """CHATTER_TIKTOKEN_ENCODING, the encoding of models tiktoken does not know: one that tiktoken has (it falls
    back to the offline copy of cl100k_base when it cannot fetch it), or "" for that copy itself."""
    import tiktoken

    from services.tokens import OFFLINE
    name = os.environ.get("CHATTER_TIKTOKEN_ENCODING", "").strip()
    names = sorted(set(tiktoken.list_encoding_names()) | {OFFLINE})
    if name and name not in names:
        raise SystemExit(f"CHATTER_TIKTOKEN_ENCODING must be one of {', '.join(names)}, got {name!r}")
    return name


# ---------------------------------------------------------------- one dataclass per process


@dataclass(frozen=True)
class CoordinatorSettings:
    """The coordinator's settings; its pure machine reads the first group."""

    flush_ms: float = 20.0
    flush_chars: int = 4096
    checkpoint_ms: float = 250.0
    checkpoint_chars: int = 2048
    persist_resend_ms: float = 2000.0
    generator_dead_ms: float = 3000.0  # three missed one-second heartbeats
    housekeeping_ms: float = 250.0
    max_text_chars: int = 100_000
    default_model: str = "mock-1"
    max_input_tokens: int = 8192  # the default input budget of a session
    stall_ms: float = 30_000.0  # a generation without a delta this long ends as error (stalled)
    # waiting for a first token is not a stall: a server that runs one request at a time holds the others
    first_token_ms: float = 600_000.0
    # a restarted coordinator waits this long for the generators to announce their generations before it
    # sweeps the streaming replies that nobody announced to ``interrupted``
    adopt_grace_ms: float = 3000.0
    max_cached_sessions: int = 5_000  # idle sessions beyond this leave memory; the database has them
    # model -> context length in tokens, for servers that do not tell it (CHATTER_MODEL_CONTEXT)
    model_contexts: dict = field(default_factory=dict)
    # earlier replies' thinking in the next prompt: "drop" (as DeepSeek and Qwen advise) or "keep" (inline,
    # as <think>...</think> before the answer, for models that want it)
    prompt_thinking: str = "drop"
    auto_title: bool = False  # CHATTER_AUTO_TITLE: the model writes a session's title after its first reply
    # how a server is told to continue a reply (auto: from what the generators' servers say they are), and how
    # often a reply cut by a fault after its first token goes on by itself
    continue_style: str = "auto"
    auto_continue: int = 2
    # the shell's
    stream_hwm: int = 0  # 0: the stream channel's own
    database_url: str = "sqlite:///data/chatter.db"
    wake_ms: int = 20
    tiktoken_encoding: str = ""  # read by services.tokens; checked here, at start

    @classmethod
    def from_env(cls) -> CoordinatorSettings:
        return cls(
            flush_ms=env_int("CHATTER_FLUSH_MS", 20, lo=0, hi=10_000),
            checkpoint_ms=env_int("CHATTER_CHECKPOINT_MS", 250, lo=1, hi=60_000),
            persist_resend_ms=env_int("CHATTER_PERSIST_RESEND_MS", 2000, lo=10, hi=600_000),
            generator_dead_ms=env_int("CHATTER_GENERATOR_DEAD_MS", 3000, lo=100, hi=3_600_000),
            # a user message and a system prompt of this many characters fit one frame together
            max_text_chars=env_int("CHATTER_MAX_TEXT_CHARS", 100_000, lo=1, hi=MAX_TEXT_CHARS_MOST),
            default_model=default_model(),
            max_input_tokens=env_int("CHATTER_MAX_INPUT_TOKENS", 8192, lo=1, hi=2**31 - 1),
            stall_ms=env_int("CHATTER_STALL_MS", 30_000, lo=100, hi=DAY_MS),
            first_token_ms=first_token_ms(),
            adopt_grace_ms=env_int("CHATTER_ADOPT_GRACE_MS", 3000, lo=0, hi=600_000),
            max_cached_sessions=env_int("CHATTER_MAX_CACHED_SESSIONS", 5_000, lo=1, hi=10_000_000),
            model_contexts=model_contexts(),
            prompt_thinking=env_choice("CHATTER_PROMPT_THINKING", "drop", PROMPT_THINKING),
            auto_title=env_bool("CHATTER_AUTO_TITLE", False),
            continue_style=env_choice("CHATTER_CONTINUE_STYLE", "auto", CONTINUE_STYLES),
            auto_continue=env_int("CHATTER_AUTO_CONTINUE", 2, lo=0, hi=100),
            stream_hwm=env_int("CHATTER_STREAM_HWM", 0, lo=0),
            database_url=database_url(),
            wake_ms=wake_ms(),
            tiktoken_encoding=tiktoken_encoding(),
        )


@dataclass(frozen=True)
class GeneratorSettings:
    base_url: str
    api_key: str = field(repr=False)  # never in a log or an error
    default_model: str = "mock-1"
    concurrency: int = 64
    streaming: bool = True
    include_usage: bool = True
    retry_deadline_ms: int = 30_000
    coordinator_silent_ms: int = 10_000
    upstream_timeout_ms: int = 60_000
    first_token_ms: int = 600_000
    http_client: str = "aiohttp"
    # a live stream decoded inside the socket's callback (read_in_callback.py), or through the client's byte iterator
    stream_reader: str = "fed"
    think_tags: str = "auto"  # a leading <think>...</think> in the content is thinking: auto, on or off
    wake_ms: int = 20
    tiktoken_encoding: str = ""  # read by services.tokens; checked here, at start

    @classmethod
    def from_env(cls) -> GeneratorSettings:
        http_client = env_str("CHATTER_HTTP_CLIENT", "aiohttp")
        if http_client not in ("aiohttp", "httpx"):
            raise SystemExit(f"CHATTER_HTTP_CLIENT must be aiohttp or httpx, got {http_client!r}")
        return cls(
            base_url=openai_base_url(),
            api_key=os.environ.get("OPENAI_API_KEY") or "not-needed",
            default_model=default_model(),
            concurrency=env_int("CHATTER_GENERATOR_CONCURRENCY", 64, lo=1, hi=100_000),
            streaming=env_bool("CHATTER_STREAM", True),
            include_usage=env_bool("CHATTER_INCLUDE_USAGE", True),
            retry_deadline_ms=env_int("CHATTER_RETRY_DEADLINE_MS", 30_000, lo=0, hi=DAY_MS),
            coordinator_silent_ms=env_int("CHATTER_COORDINATOR_SILENT_MS", 10_000, lo=100, hi=DAY_MS),
            upstream_timeout_ms=env_int("CHATTER_UPSTREAM_TIMEOUT_MS", 60_000, lo=100, hi=DAY_MS),
            first_token_ms=first_token_ms(),
            http_client=http_client,
            stream_reader=env_choice("CHATTER_STREAM_READER", "fed", ("fed", "iterator")),
            think_tags=env_choice("CHATTER_THINK_TAGS", "auto", THINK_TAGS),
            wake_ms=wake_ms(),
            tiktoken_encoding=tiktoken_encoding(),
        )


@dataclass(frozen=True)
class PersisterSettings:
    database_url: str = "sqlite:///data/chatter.db"
    group_commit_ms: int = 10
    append_hold_ms: int = 250
    chunk_log_rows: int = ROTATE_ROWS  # rows of the chunk log's current table before it turns to the other

    @classmethod
    def from_env(cls) -> PersisterSettings:
        return cls(database_url=database_url(),
                   group_commit_ms=env_int("CHATTER_GROUP_COMMIT_MS", 10, lo=0, hi=10_000),
                   append_hold_ms=env_int("CHATTER_APPEND_HOLD_MS", 250, lo=0, hi=10_000),
                   chunk_log_rows=env_int("CHATTER_CHUNK_LOG_ROWS", cls.chunk_log_rows, lo=1, hi=100_000_000))


@dataclass(frozen=True)
class MockSettings:
    host: str = "127.0.0.1"
    port: int = 8700
    tokens: int = 40
    tps: float = 50.0
    ttft_ms: float = 50.0
    serial: bool = False  # one request at a time; the others answered 200 at once and held, as llama.cpp does
    context: int = 0  # the model's context length in tokens (prompt and reply); 0: none
    server: str = "chatter"  # what it imitates (MOCK_SERVERS)

    @classmethod
    def from_env(cls) -> MockSettings:
        return cls(host=os.environ.get("CHATTER_MOCK_HOST") or cls.host, port=mock_port(), tokens=env_int("CHATTER_MOCK_TOKENS", cls.tokens, lo=0, hi=1_000_000),
                   tps=env_float("CHATTER_MOCK_TPS", cls.tps, lo=0.001, hi=1e9),
                   ttft_ms=env_float("CHATTER_MOCK_TTFT_MS", cls.ttft_ms, lo=0, hi=3_600_000),
                   serial=env_bool("CHATTER_MOCK_SERIAL", False),
                   context=env_int("CHATTER_MOCK_CONTEXT", 0, lo=0, hi=10_000_000),
                   server=env_choice("CHATTER_MOCK_SERVER", "chatter", MOCK_SERVERS))
