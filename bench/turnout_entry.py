"""Entry for profile_proxy.sh: `./profile_proxy.sh pyspy turnout_entry.py` profiles our proxy."""

from proxy.__main__ import main

main()
