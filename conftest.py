# Lets `pytest` import the top-level packages (models, data, utils, engine) from the repo root.
