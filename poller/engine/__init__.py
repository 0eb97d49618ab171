"""The sweep engine: the :class:`~poller.engine.poller.Poller` and its public API, one batch's
life from rate slot to emitted records, UID sources, sinks and the work builder.
"""
