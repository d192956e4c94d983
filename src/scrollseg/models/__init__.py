from .unet import ResEncUNet, build_model

__all__ = ["ResEncUNet", "build_model"]
