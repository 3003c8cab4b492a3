"""The plumbing the modules stand on: hand-written, tested library code a student never writes.

The notebooks in modules/ import these; the files beside this folder (profiling.py,
quantization.py, ...) are generated from the notebooks and hold what the students build.

    system          the machine a measurement ran on (machine_info, usable_cores)
    tables          plain-text tables and SI prefixes for printed reports
    notebook        plotting and the `raises` check of the graded cells
    asserts         failing asserts in a notebook show their values (installed by notebook)
    testing         fakes for tests and graded cells: a clock, a costed call, a layer
    introspect      what a profiler asks of a model: arrays, shapes, leaf modules
    profile_report  the records and tables the profiler returns (module 14)
    energy          Linux powercap (RAPL) counters and the labelled estimate without them (14)
    quantization_utils  input checks, the layer swap and analysis loops of module 15
    sparse_io       the compressed model's file format (16); training: the fine-tuning loop
    serving         the HTTP inference server, its client and load generator (18)
    parallel        fork_map: worker processes for parallel generation (18)
    stats, loadgen, reporting, contention   distributions, scenario settings, report
                    schema and the background-load probes of module 19
"""
