"""Models at run time: bundle registry, runners, engine, tasks, job store and worker. No HTTP."""
