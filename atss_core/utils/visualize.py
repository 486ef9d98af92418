"""Drawing detections on images (the demo's and the quick start's pictures)."""
import cv2
import numpy as np


def _colour(label):
    rng = np.random.RandomState(label * 7919 + 17)
    return tuple(int(c) for c in rng.randint(64, 256, size=3))


def draw_detections(image, detections):
    """A copy of the BGR uint8 ``image`` [H, W, 3] with the xyxy boxes of
    ``detections`` (a :class:`atss_core.engine.predictor.Detections` of that
    image) drawn, each captioned "name score" in a colour of its class."""
    out = image.copy()
    for box, label, score, name in zip(detections.boxes.tolist(), detections.labels.tolist(),
                                       detections.scores.tolist(), detections.names):
        x1, y1, x2, y2 = (int(round(v)) for v in box)
        colour = _colour(int(label))
        cv2.rectangle(out, (x1, y1), (x2, y2), colour, 2)
        caption = f"{name} {score:.2f}"
        (tw, th), _ = cv2.getTextSize(caption, cv2.FONT_HERSHEY_SIMPLEX, 0.5, 1)
        top = max(y1 - th - 4, 0)
        cv2.rectangle(out, (x1, top), (x1 + tw + 2, top + th + 4), colour, -1)
        cv2.putText(out, caption, (x1 + 1, top + th + 1), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1,
                    cv2.LINE_AA)
    return out
