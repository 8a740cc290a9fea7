"""The database, one room a concern: its tables (``models``), opening it (``database``), the chunk log of
streaming text (``chunklog``), the persister's writes (``writes``, it is the only writer) and the reads
(``reads``). Callers use ``store.NAME``: every name is handed on here."""
from services.store.models import *  # noqa: F401,F403
from services.store.models import _CHUNK_COLUMNS, _PLAIN_CHUNK_COLUMNS  # noqa: F401
from services.store.database import *  # noqa: F401,F403
from services.store.chunklog import *  # noqa: F401,F403
from services.store.chunklog import _COLUMNS, _LOG_INDEX, _log_rows, _pack_entries, _unpack_entries  # noqa: F401
from services.store.writes import *  # noqa: F401,F403
from services.store.reads import *  # noqa: F401,F403
from services.store.deletion import *  # noqa: F401,F403
from services.store.search import search as search_messages  # noqa: F401
