"""The pure core: records and their codes, errors, batching, de-duplication, merging, change
detection, retry policy and the retry loop, sweep counters, the rate meter and the clock.

Nothing here opens a socket or imports an HTTP, event-loop or metrics library (asyncio's own
primitives aside); everything above builds on it.
"""
