"""``python -m glass_llm.lmeval [lm_eval run options]``: the harness's ``run`` command line
with the ``glass`` model registered and the offline tasks on the include path."""

from . import main

raise SystemExit(main())
