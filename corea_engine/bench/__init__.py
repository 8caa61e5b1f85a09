"""Throughput and latency benchmarking of corea_engine, layer by layer.

    questions.py  the fixed question set (GSM8K from the shared data) and its file form for C++
    stats.py      one request's Sample, and the per-level summary both load clients report
    targets.py    what is driven: the bare executor, the in-process cascade, `corea serve` over gRPC
    loadgen.py    an asyncio load generator: N requests in flight, fixed count or fixed time
    spawn.py      start `corea serve` (and `corea worker`) on loopback for a self-contained run
    cpp_client.py build and run the C++ client (cpp/corea_load.cc) against the same server
    report.py     JSON, a markdown table and a plot of throughput and p99 against concurrency
"""
