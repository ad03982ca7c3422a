"""The engine shared by every model: `engine.train.train(cfg)` and `engine.evaluate.evaluate(cfg)`
(configs from `utils.config.load_config`); see README.md."""
