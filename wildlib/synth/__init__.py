"""Procedural "savanna" detection set: a stand-in for the paper's unreleased wildlife photos.
Introduced in notebook 00.

Every image is a rendered scene (sky, hills, textured ground, acacias, bushes, rocks, termite
mounds, water) with 1-6 animals drawn as articulated silhouettes: a body, legs in a walking
pose, neck, head, tail and the features that tell the 13 classes apart (zebra stripes, giraffe
patches and long neck, leopard rosettes, elephant bulk, trunk and ears, crocodile long and low,
...).  Animals are scaled by depth, shaded, hazed with distance, cast shadows, overlap each
other and are partly hidden by grass and bushes; the whole frame gets lighting, blur, noise and
JPEG compression.  ``difficulty`` (0..1) turns clutter, occlusion and degradation up or down.

Output is the authors' Pascal VOC layout, so the real loader is the one exercised::

    <out>/annotations/<id>.xml  <out>/images/<id>.jpg  <out>/train.txt  <out>/valid.txt

Rendering is deterministic: image ``i`` of seed ``s`` depends on ``(s, i)`` only (a test holds
the bytes of a small set to a recorded digest).

The modules, from the bottom up:

``noise``     smooth and fractal noise, colour jitter
``sprite``    the supersampled RGBA canvas animals are drawn on, and its shapes
``textures``  coats: stripes, patches, rosettes, spots
``animals``   the 13 classes (a shared quadruped template, per-class features), sizes, herds
``scenery``   sky, hills, ground, acacias, bushes, grass, rocks; pasting sprites into a scene
``aerial``    the other scene (``SynthConfig(scene="aerial")``): herd surveys seen from above, in tiles
``dataset``   scenes with their boxes, VOC files, splits; :func:`generate` and :func:`ensure`
"""

from ..classes import CLASSES
from .aerial import AERIAL_CLASSES
from .animals import render_sprite
from .dataset import SCENES, SynthConfig, choose_groups, ensure, generate, main

__all__ = ["AERIAL_CLASSES", "CLASSES", "SCENES", "SynthConfig", "choose_groups", "ensure", "generate", "main",
           "render_sprite"]
