"""What the search may choose: which stages, in which order, with which hyperparameters.

``spaces.space`` declares the space (used when a study file is loaded), with the typed values of
``spaces.distributions``; ``spaces.families`` declares each stage family once; ``spaces.sampling``
turns an Optuna trial into a pipeline.
"""
