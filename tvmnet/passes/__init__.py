"""tvmnet's Relax passes, one per file, and the phased pipeline that runs them."""
from .fold_batchnorm import FoldBatchNorm
from .fold_constants import FoldWeightArithmetic
from .pointwise_to_gemm import PointwiseToGemm
from .pipeline import lower_to_tir, finalize, op_counts

__all__ = ["FoldBatchNorm", "FoldWeightArithmetic", "PointwiseToGemm", "lower_to_tir", "finalize", "op_counts"]
