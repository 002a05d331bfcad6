"""Commands and helpers around training runs: report, sweep, summary, task similarity, the
configuration reference and the data commands (``mtlora data check|prepare``)."""
