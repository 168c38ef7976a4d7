"""Subcommands of the ``glass`` CLI, one module each (see ``glass_llm.cli``)."""
