"""The budget-matched comparison grid: cells, runner (``run``) and tables/plots (``report``)."""
