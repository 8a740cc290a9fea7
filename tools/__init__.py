"""Tools that drive a whole stack and check it from outside: the load test, its verification and
report, and a private stack (``spawn``). Unlike ``clients``, they read the mock's script and the
database, to account for every reply."""
