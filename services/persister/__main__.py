"""``python -m services.persister``: see ``shell.py``."""
from services.persister.shell import main

main()
