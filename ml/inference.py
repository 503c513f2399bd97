"""The inference API workers call: build an :class:`Analyzer` once, then analyse batches."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
from PIL import Image

from ml import render
from ml.config import CLASSES, weights_dir
from ml.decode import DecodedImage, to_rgb
from ml.gate import GateModel, gate_features
from ml.model_input import ModelInput, model_input
from ml.weights_io import ModelLoadError

__all__ = ["Analyzer", "ImageAnalysis", "ModelLoadError"]

logger = logging.getLogger(__name__)


@dataclass
class ImageAnalysis:
    label: str
    probabilities: dict[str, float]
    confidence: float
    lesion_mask: np.ndarray  # (H, W) bool at the input's resolution
    lesion_area_fraction: float
    bbox: tuple[int, int, int, int] | None  # x_min, y_min, x_max, y_max; max exclusive
    # The heatmaps at the network's resolution (the whole image squeezed to a square):
    # what a worker stores. `gradcam` / `seg_gradcam` upsample them on first use only.
    gradcam_map: np.ndarray  # (S, S) float32 in [0, 1]
    seg_gradcam_map: np.ndarray  # (S, S) float32 in [0, 1]
    model_version: str
    class_logits: np.ndarray | None = (
        None  # raw network output, before bias and temperature
    )
    explained_class: str = (
        ""  # the class Grad-CAM explains: the label unless the caller chose
    )
    # Out of distribution: None when the weights carry no statistics to judge by.
    in_distribution: bool | None = None
    ood_score: float | None = None
    # The ultrasound gate (ml.gate): withheld = not a breast B-mode ultrasound, so no label,
    # probabilities or outline may be shown. gate_score is None when the weights carry no gate.
    withheld: bool = False
    gate_score: float | None = None
    # The second look (model.json's second_look): the network ran again on a square crop
    # around the lesion it found, and the logits are both passes' mean (the outline is the
    # whole scan's). False when it was off, or nothing was found to look at.
    looked_again: bool = False

    @cached_property
    def gradcam(self) -> np.ndarray:
        """(H, W) float32 in [0, 1] at the input's resolution."""
        return render.upsample(self.gradcam_map, *self._size)

    @cached_property
    def seg_gradcam(self) -> np.ndarray:
        """(H, W) float32 in [0, 1] at the input's resolution."""
        return render.upsample(self.seg_gradcam_map, *self._size)

    @property
    def _size(self) -> tuple[int, int]:
        height, width = self.lesion_mask.shape
        return width, height

    def to_dict(self) -> dict:
        return {
            "label": self.label,
            "probabilities": dict(self.probabilities),
            "confidence": self.confidence,
            "lesion_area_fraction": self.lesion_area_fraction,
            "bbox": list(self.bbox) if self.bbox else None,
            "model_version": self.model_version,
            "explained_class": self.explained_class,
            "in_distribution": self.in_distribution,
            "ood_score": self.ood_score,
            "logits": None
            if self.class_logits is None
            else [float(v) for v in self.class_logits],
            "withheld": self.withheld,
            "gate_score": self.gate_score,
            "looked_again": self.looked_again,
        }

    def stored_artifacts(self) -> dict[str, bytes]:
        """What a worker keeps: the mask as a 1-bit PNG at the input's size and each
        heatmap as an 8-bit grey PNG at the network's size. Pictures are drawn from
        these by whoever shows them (the browser, or ``render_artifacts``)."""
        return {
            "mask": render.mask_png(self.lesion_mask),
            "gradcam_map": render.heatmap_png(self.gradcam_map),
            "seg_gradcam_map": render.heatmap_png(self.seg_gradcam_map),
        }

    def render_artifacts(self, image: np.ndarray) -> dict[str, bytes]:
        """PNG bytes of the mask (0/255), the outline overlay and both heatmap overlays."""
        image = _as_rgb(image)
        return {
            "mask": render.png_bytes(self.lesion_mask.astype(np.uint8) * 255),
            "overlay": render.png_bytes(render.mask_overlay(image, self.lesion_mask)),
            "gradcam": render.png_bytes(render.heatmap_overlay(image, self.gradcam)),
            "seg_gradcam": render.png_bytes(
                render.heatmap_overlay(image, self.seg_gradcam)
            ),
        }


def _as_rgb(image: np.ndarray | DecodedImage) -> np.ndarray:
    pixels = image.pixels if isinstance(image, DecodedImage) else np.asarray(image)
    if pixels.dtype != np.uint8:
        raise TypeError(f"expected uint8 pixels, got {pixels.dtype}")
    return to_rgb(pixels)


def _resize_float(values: np.ndarray, width: int, height: int) -> np.ndarray:
    return np.asarray(
        Image.fromarray(values.astype(np.float32), mode="F").resize(
            (width, height), Image.BILINEAR
        )
    )


def _stretched(item: ModelInput) -> np.ndarray:
    """The model input stretched back to the scan's own size."""
    if item.pixels.shape[:2] == (item.height, item.width):
        return item.pixels
    return np.asarray(
        Image.fromarray(item.pixels).resize((item.width, item.height), Image.BILINEAR)
    )


def bounding_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    rows, columns = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    if rows.size == 0:
        return None
    return int(columns[0]), int(rows[0]), int(columns[-1]) + 1, int(rows[-1]) + 1


class Analyzer:
    """Loads the network and weights once; :meth:`analyze` is then safe to call repeatedly."""

    def __init__(self, model, meta) -> None:
        """``model`` holds the weights ``meta`` describes (see :meth:`load`)."""
        from ml import ood
        from ml.explain import Explainer
        from ml.model import CLASS_GRADCAM_LAYER, SEG_GRADCAM_LAYER

        self._model = model
        self._explainer = Explainer(
            model,
            class_layer=CLASS_GRADCAM_LAYER,
            seg_layer=SEG_GRADCAM_LAYER,
            seg_threshold=meta.seg_threshold,
            class_bias=meta.class_bias,
            feature_layers=ood.feature_layers(meta.backbone),
        )
        self.meta = meta
        self.model_version: str = meta.version
        self.image_size: int = meta.image_size
        self.temperature: float = meta.temperature
        self.class_bias = np.asarray(meta.class_bias, np.float64)
        self.ood = meta.ood
        if self.ood is not None and meta.caution_threshold is not None:
            # The caution re-set after training (model.json); the archive keeps its own.
            self.ood = dataclasses.replace(
                self.ood, threshold=float(meta.caution_threshold)
            )
        self.second_look: float | None = (
            None if meta.second_look is None else float(meta.second_look["margin"])
        )
        self._forward = None  # the plain network call, made on the first second look
        self.gate = GateModel.from_dict(meta.gate)
        if self.gate is None:
            logger.warning(
                "%s carries no ultrasound gate: nothing is withheld "
                "(fit one with `python -m ml fit-gate`)",
                meta.version,
            )

    @classmethod
    def load(cls, weights: str | Path | None = None) -> Analyzer:
        from ml import weights_io
        from ml.model import build_for

        directory = Path(weights) if weights is not None else weights_dir()
        started = time.perf_counter()
        meta = weights_io.read_meta(directory)
        if list(meta.classes) != list(CLASSES):
            raise ModelLoadError(
                f"{directory}: classes {meta.classes} do not match {list(CLASSES)}"
            )
        model = build_for(meta)
        meta = weights_io.load_into(
            model, directory
        )  # the archive's calibration is authoritative
        analyzer = cls(model, meta)
        analyzer.analyze(
            [np.zeros((meta.image_size, meta.image_size, 3), np.uint8)]
        )  # trace once, not on a scan
        logger.info("loaded %s in %.1fs", meta.version, time.perf_counter() - started)
        return analyzer

    def analyze(
        self,
        images: Sequence[np.ndarray | DecodedImage | ModelInput],
        *,
        batch_size: int = 8,
        class_index: Sequence[int] | None = None,
    ) -> list[ImageAnalysis]:
        """Analyse images of any size, or model inputs made for this model's size.

        ``class_index`` picks the class Grad-CAM explains; by default the label shown, i.e. the
        argmax of the calibrated probabilities.
        """
        from ml.metrics import softmax
        from ml.preprocess import network_input

        results: list[ImageAnalysis] = []
        for start in range(0, len(images), batch_size):
            chunk = [self._input(image) for image in images[start : start + batch_size]]
            batch = np.stack([item.pixels for item in chunk])
            chosen = (
                None
                if class_index is None
                else list(class_index[start : start + batch_size])
            )
            explanation = self._explainer(network_input(batch), chosen)
            logits = explanation.class_logits
            lesion_probability = 1.0 / (1.0 + np.exp(-explanation.seg_logits))
            ood_scores = (
                self.ood.score(explanation.features) if self.ood is not None else None
            )
            gate_scores = (
                None
                if self.gate is None
                else self.gate.score(np.stack([gate_features(b) for b in batch]))
            )
            withheld = [
                gate_scores is not None and bool(self.gate.withheld(gate_scores[i]))
                for i in range(len(chunk))
            ]
            masks = [
                _resize_float(lesion_probability[i], item.width, item.height)
                >= self.meta.seg_threshold
                for i, item in enumerate(chunk)
            ]
            looked = [False] * len(chunk)
            if self.second_look is not None:
                logits, looked = self._look_again(chunk, logits, masks, withheld)
                if chosen is None:
                    # The heatmap explains the label shown, which the second look may change.
                    shown = (logits + self.class_bias).argmax(axis=1)
                    changed = np.nonzero(shown != explanation.explained_class)[0]
                    if changed.size:
                        explanation.class_cam = explanation.class_cam.copy()
                        explanation.explained_class = explanation.explained_class.copy()
                        again = self._explainer(
                            network_input(batch[changed]), shown[changed]
                        )
                        explanation.class_cam[changed] = again.class_cam
                        explanation.explained_class[changed] = again.explained_class
            probabilities = softmax(logits + self.class_bias, self.temperature)
            for i, item in enumerate(chunk):
                mask = masks[i]
                best = int(probabilities[i].argmax())
                results.append(
                    ImageAnalysis(
                        label=CLASSES[best],
                        probabilities={
                            name: float(probabilities[i, c])
                            for c, name in enumerate(CLASSES)
                        },
                        confidence=float(probabilities[i, best]),
                        lesion_mask=mask,
                        lesion_area_fraction=float(mask.mean()),
                        bbox=bounding_box(mask),
                        gradcam_map=np.clip(explanation.class_cam[i], 0, 1),
                        seg_gradcam_map=np.clip(explanation.seg_cam[i], 0, 1),
                        model_version=self.model_version,
                        class_logits=logits[i],
                        explained_class=CLASSES[int(explanation.explained_class[i])],
                        in_distribution=None
                        if ood_scores is None
                        else bool(self.ood.in_distribution(ood_scores[i])),
                        ood_score=None if ood_scores is None else float(ood_scores[i]),
                        withheld=withheld[i],
                        gate_score=None
                        if gate_scores is None
                        else float(gate_scores[i]),
                        looked_again=looked[i],
                    )
                )
        return results

    def _look_again(
        self,
        chunk: list[ModelInput],
        logits: np.ndarray,
        masks: list[np.ndarray],
        withheld: list[bool],
    ) -> tuple[np.ndarray, list[bool]]:
        """The second look, for the label: each scan with a lesion (and not withheld) is
        cropped around the lesion's box (:func:`ml.zoom.square_crop`, margin
        ``second_look``) from its model input stretched back to the scan's size (what a
        worker has, so the worker and ``ml predict`` agree), and the network's class logits
        on the crop are averaged with the whole scan's. The outline stays the whole scan's:
        pasting the crop's back did not hold up in LOSO (ml/reports/notes.md)."""
        from ml import zoom
        from ml.preprocess import network_input

        boxes = {
            i: box
            for i, mask in enumerate(masks)
            if not withheld[i] and (box := bounding_box(mask)) is not None
        }
        if not boxes:
            return logits, [False] * len(chunk)
        crops = np.stack(
            [
                zoom.square_crop(
                    _stretched(chunk[i]), box, self.second_look, self.image_size
                )
                for i, box in boxes.items()
            ]
        )
        looked = list(boxes)
        logits = logits.copy()
        logits[looked] = (logits[looked] + self._class_logits(network_input(crops))) / 2
        return logits, [i in boxes for i in range(len(chunk))]

    def _class_logits(self, batch: np.ndarray) -> np.ndarray:
        """The network's class logits alone (no heatmaps)."""
        if self._forward is None:
            import tensorflow as tf

            self._forward = tf.function(
                lambda x: self._model(x, training=False)["class_logits"],
                reduce_retracing=True,
            )
        return np.asarray(self._forward(batch))

    def _input(self, image: np.ndarray | DecodedImage | ModelInput) -> ModelInput:
        """The image squeezed to the network's square: made here, or stored with the
        scan when it was uploaded (the same resize_for_model)."""
        if isinstance(image, ModelInput):
            if image.side != self.image_size:
                raise ValueError(
                    f"a {image.side} px model input, not {self.image_size} px as "
                    f"{self.model_version} takes"
                )
            return image
        return model_input(_as_rgb(image), self.image_size)
