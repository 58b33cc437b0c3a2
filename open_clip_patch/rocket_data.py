"""clip-rocket's views in open_clip_train's own webdataset pipeline (`--rocket OBJ`).

While get_wds_dataset builds a training pipeline with `--rocket`, its `wds.map_dict(image=..., text=...)` stage
gets the rocket maps instead of the stock ones (everything else is stock, as with `--dataset-reinforcement`):

- image -> [1 + A, C, H, W]: the global view (RandomResizedCrop scale `--weak-min-scale`..1, bicubic) and A
  augmented views (RandomResizedCrop 0.08..`--multicrop-max-scale`, bicubic; ColorJitter(.4, .4, .4, .1) with
  p 0.8; grayscale with `--grayscale-prob`; Gaussian blur, sigma uniform in [0.1, 2], with `--blur-prob`;
  horizontal flip), at the model's image size and with its mean and std (clip-rocket's own models use
  ImageNet's; an open_clip model is trained with its own normalisation).
- text -> [1 + A, L] tokens: optionally cleaned first (`--clean-before-augment`: ftfy, HTML unescape,
  whitespace, lower case); the global caption loses its stop words with `--remove-stopwords-prob`; each of the
  A augmented captions loses them with the same chance and then, with `--text-augment`, gets one EDA operation
  drawn with weights (`--no-text-augment-prob`, `--synonym-replacement-prob`, `--random-swap-prob`,
  `--random-deletion-prob`): identity, one WordNet synonym replacement, one swap of two words, deletion of each
  word with p 0.1. An operation that leaves nothing keeps the text it was given (as clip-rocket's tokenizer).

Offline: the stop words are NLTK's English list, shipped with the package (`mode/core/stopwords_en.txt`); words
are split by NLTK's Treebank-style word tokenizer, which needs no downloaded data (clip-rocket's `word_tokenize` also
splits sentences first with Punkt, which would need a download; captions are mostly one sentence); WordNet is
read from `--wordnet-dir` or NLTK's installed data (`mode.datacomp.filters.wordnet`), only with
`--text-augment` and a synonym weight above 0.

The randomness is the loader worker's (torch and `random`, which the DataLoader seeds from `--seed`), so one
seed gives the same views run to run.
"""

from __future__ import annotations

import random
from functools import lru_cache

import torch

from mode.core.text import stopwords


@lru_cache(maxsize=1)
def _word_tokenizer():
    from nltk.tokenize import NLTKWordTokenizer

    return NLTKWordTokenizer()


def remove_stopwords(text: str) -> str:
    """The caption's words (Treebank tokens) without NLTK's English stop words, joined by spaces."""
    stop = stopwords()
    return " ".join(w for w in _word_tokenizer().tokenize(text) if w.lower() not in stop)


class EDA:
    """The three EDA operations clip-rocket draws from (Wei and Zou 2019, as textaugment implements them)."""

    def __init__(self, wordnet_dir: str | None = None, rng: random.Random | None = None):
        self.wordnet_dir, self.rng, self._wn = wordnet_dir, rng or random, None

    def synonyms(self, word: str) -> list[str]:
        if self._wn is None:
            from mode.datacomp.filters import wordnet

            self._wn = wordnet(self.wordnet_dir, needed_by="--text-augment's synonym replacement")
        found = set()
        for synset in self._wn.synsets(word):
            for lemma in synset.lemmas():
                name = lemma.name().replace("_", " ").replace("-", " ").lower()
                found.add("".join(c for c in name if c == " " or "a" <= c <= "z"))
        found.discard(word)
        out = sorted(found)
        self.rng.shuffle(out)
        return out

    def synonym_replacement(self, text: str, n: int = 1) -> str:
        """Up to n distinct non-stop words replaced (every occurrence) by a random WordNet synonym."""
        words = text.split()
        candidates = sorted({w for w in words if w not in stopwords()})
        self.rng.shuffle(candidates)
        replaced = 0
        for word in candidates:
            options = self.synonyms(word)
            if options:
                pick = self.rng.choice(options)
                words = [pick if w == word else w for w in words]
                replaced += 1
            if replaced >= n:
                break
        return " ".join(words)

    def random_swap(self, text: str, n: int = 1) -> str:
        """Two random positions swapped, n times, as textaugment 1.3.4 (clip-rocket's pin) swaps: the second
        position is drawn until it differs from the first, and a fourth draw is made but not used (the words stay
        as they are when the first three all hit the first position)."""
        words = text.split()
        for _ in range(n):
            if not words:
                break
            i = j = self.rng.randint(0, len(words) - 1)
            tries = 0
            while j == i:
                j = self.rng.randint(0, len(words) - 1)
                tries += 1
                if tries > 3:
                    break
            if j != i and tries <= 3:
                words[i], words[j] = words[j], words[i]
        return " ".join(words)

    def random_deletion(self, text: str, p: float = 0.1) -> str:
        """Each word dropped with probability p; one random word is kept when all would go."""
        words = text.split()
        if len(words) <= 1:
            return text.strip()
        kept = [w for w in words if self.rng.uniform(0, 1) > p]
        return " ".join(kept) if kept else self.rng.choice(words)


class CaptionViews:
    """`text` map: one caption -> [1 + A, L] tokens (module docstring)."""

    def __init__(self, tokenizer, num_augs: int, remove_stopwords_prob: float = 0.8, text_augment: bool = False,
                 weights=(0.0, 0.4, 0.4, 0.2), clean_before_augment: bool = False, wordnet_dir: str | None = None):
        self.tokenizer, self.num_augs = tokenizer, num_augs
        self.remove_prob, self.text_augment, self.weights = remove_stopwords_prob, text_augment, tuple(weights)
        self.clean, self.eda = clean_before_augment, EDA(wordnet_dir)

    def weak(self, text: str) -> str:
        if text and random.random() < self.remove_prob:
            text = remove_stopwords(text) or text
        return text

    def strong(self, text: str) -> str:
        text = self.weak(text)
        if text and self.text_augment:
            op = random.choices((None, self.eda.synonym_replacement, self.eda.random_swap, self.eda.random_deletion),
                                weights=self.weights, k=1)[0]
            if op is not None:
                text = op(text) or text
        return text

    def views(self, text: str) -> list[str]:
        if self.clean:
            from open_clip.tokenizer import basic_clean, whitespace_clean

            text = whitespace_clean(basic_clean(text)).lower()
        return [self.weak(text), *(self.strong(text) for _ in range(self.num_augs))]

    def __call__(self, text: str) -> torch.Tensor:
        return self.tokenizer(self.views(text))


class GaussianBlur:
    """PIL's Gaussian blur with a radius drawn uniformly in [lo, hi] (SimCLR's, as clip-rocket applies it)."""

    def __init__(self, lo: float = 0.1, hi: float = 2.0):
        self.lo, self.hi = lo, hi

    def __call__(self, image):
        from PIL import ImageFilter

        sigma = self.lo + (self.hi - self.lo) * torch.rand(()).item()
        return image.filter(ImageFilter.GaussianBlur(radius=sigma))


def _size_and_norm(preprocess_img):
    """(image size, mean, std) of the model's own train transform."""
    from torchvision import transforms as T

    size, mean, std = None, None, None
    for t in getattr(preprocess_img, "transforms", []):
        if isinstance(t, T.Normalize):
            mean, std = tuple(t.mean), tuple(t.std)
        if isinstance(t, (T.RandomResizedCrop, T.Resize, T.CenterCrop)) and size is None:
            size = t.size
    if size is None or mean is None:
        raise ValueError("--rocket: the model's train transform has no crop size or normalisation to follow")
    return size, mean, std


class ImageViews:
    """`image` map: one PIL image -> [1 + A, C, H, W] (module docstring)."""

    def __init__(self, preprocess_img, num_augs: int, weak_min_scale: float = 0.5,
                 multicrop_max_scale: float = 1.0, blur_prob: float = 0.5, grayscale_prob: float = 0.2):
        from torchvision import transforms as T

        size, mean, std = _size_and_norm(preprocess_img)
        bicubic = T.InterpolationMode.BICUBIC
        tail = [T.ToTensor(), T.Normalize(mean, std)]
        self.global_view = T.Compose([T.RandomResizedCrop(size, scale=(weak_min_scale, 1.0), interpolation=bicubic),
                                      *tail])
        self.augment = T.Compose([
            T.RandomResizedCrop(size, scale=(0.08, multicrop_max_scale), interpolation=bicubic),
            T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
            T.RandomGrayscale(p=grayscale_prob),
            T.RandomApply([GaussianBlur(0.1, 2.0)], p=blur_prob),
            T.RandomHorizontalFlip(),
            *tail])
        self.num_augs = num_augs

    def __call__(self, image) -> torch.Tensor:
        image = image.convert("RGB")
        return torch.stack([self.global_view(image), *(self.augment(image) for _ in range(self.num_augs))])


class RocketWds:
    """The `webdataset` module as get_wds_dataset sees it while building a rocket training pipeline."""

    def __init__(self, wds, args, tokenizer):
        self._wds, self._args, self._tokenizer = wds, args, tokenizer

    def __getattr__(self, name):
        return getattr(self._wds, name)

    def map_dict(self, image=None, text=None, **kw):
        a = self._args
        images = ImageViews(image, a.num_augs, a.weak_min_scale, a.multicrop_max_scale, a.blur_prob,
                            a.grayscale_prob)
        texts = CaptionViews(self._tokenizer, a.num_augs, a.remove_stopwords_prob, a.text_augment,
                             (a.no_text_augment_prob, a.synonym_replacement_prob, a.random_swap_prob,
                              a.random_deletion_prob), a.clean_before_augment, a.wordnet_dir)
        return self._wds.map_dict(image=images, text=texts, **kw)


def wrap_get_wds_dataset(get_wds_dataset, oc_data):
    """get_wds_dataset that builds the rocket views for training when `--rocket`."""

    def wrapped(args, preprocess_img, is_train, epoch=0, floor=False, tokenizer=None):
        if not (is_train and getattr(args, "rocket", None)):
            return get_wds_dataset(args, preprocess_img, is_train, epoch=epoch, floor=floor, tokenizer=tokenizer)
        stock_wds = oc_data.wds
        oc_data.wds = RocketWds(stock_wds, args, tokenizer)
        try:
            return get_wds_dataset(args, preprocess_img, is_train, epoch=epoch, floor=floor, tokenizer=tokenizer)
        finally:
            oc_data.wds = stock_wds

    wrapped.__wrapped__ = get_wds_dataset
    return wrapped
