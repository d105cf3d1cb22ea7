"""See what focused linear attention computes: attention matrices, their ranks, the focusing
function, permutation equivariance and position tables, from one real layer of a model.

`attention_matrices.py` builds the equivalent N x N matrices (softmax, ReLU linear, focused linear,
focused linear + DWC) from a layer's own q, k, v and kernel functions; `rank.py` and
`permutation.py` measure them; `figures.py` draws; `images.py` finds a picture without a download;
`capture.py` records a layer's input while the model runs. `flatten-dense analyze` runs it all.
"""
