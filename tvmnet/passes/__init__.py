"""tvmnet's Relax passes, one per file, and the phased pipeline that runs them."""

from tvmnet.passes.fold_batchnorm import FoldBatchNorm
from tvmnet.passes.fold_constants import FoldWeightArithmetic
from tvmnet.passes.pipeline import finalize, lower_to_tir, op_counts
from tvmnet.passes.pointwise_to_gemm import PointwiseToGemm

__all__ = ["FoldBatchNorm", "FoldWeightArithmetic", "PointwiseToGemm", "lower_to_tir", "finalize", "op_counts"]
