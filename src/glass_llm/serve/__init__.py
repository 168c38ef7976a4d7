"""An OpenAI-compatible HTTP server with sparse decoding per request (``glass serve``).

Modules: ``protocol`` parses and validates request bodies, ``responses`` builds the
OpenAI-format bodies and stream chunks, ``decode`` runs one padded batch through
``model.generate``, ``worker`` owns the model on a single thread and batches requests,
``app`` holds the HTTP routes and ``server`` runs uvicorn with a graceful shutdown.
"""
