"""``python -m unite_llm.cli`` is the ``unite`` command."""

from . import main

main()
