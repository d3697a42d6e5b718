"""rigd's analysis: what is computed before a session (the dry run) and after it (report, NWB).

This package owns the offline side of rigd: the dry run's rehearsal statistics
(:mod:`analysis.dry_run`), the session report (:mod:`analysis.report`), the NWB export
(:mod:`analysis.nwb_export`), labelled trial sets from recorded sessions (:mod:`analysis.trials`),
the neural quantities of Chen et al. 2021 (:mod:`analysis.neural`: selectivity, coding direction,
modularity, t90), the decoder accuracy table (:mod:`analysis.decoder_report`) and the one
statistics module they share (:mod:`analysis.stats`). Nothing here runs in a session's real-time
path, and the service's loop imports none of it (import-linter contract in pyproject.toml).
"""
