"""What the search may choose: which stages, in which order, with which hyperparameters.

``spaces.space`` declares the space (light, used when a study file is loaded);
``spaces.sampling`` turns an Optuna trial into a pipeline.
"""
