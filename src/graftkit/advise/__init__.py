"""Choose how to use a pretrained network by measuring it on the data.

    feats = graftkit.features("lite0", "photos/")          # pooled features per depth, cached on disk
    advice = graftkit.advise.recommend(model, "photos/")    # probes at every depth -> a strategy, and why
    graftkit.advise.train("lite0", "photos/", out_dir="run", strategy="auto", time_budget=60)

features.py  the feature cache       probe.py   cross-validated linear probes
advice.py    the four scenarios      run.py     training with a strategy (probe packages, lp-ft, partial, ...)
"""
from .advice import Advice, recommend
from .features import Features, default_depths, features
from .probe import ProbeResult, probe
from .run import probe_package, train

__all__ = ["Advice", "Features", "ProbeResult", "default_depths", "features", "probe", "probe_package", "recommend",
           "train"]
