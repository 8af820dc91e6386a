"""A word-level tokenizer for the persona world, trained with `tokenizers`, saved as an HF fast tokenizer."""

from __future__ import annotations

from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers, decoders
from transformers import PreTrainedTokenizerFast

from gremlinkit.zoo.corpus import BOS, Corpus

PAD, UNK = "<pad>", "<unk>"


def train_tokenizer(corpus: Corpus) -> PreTrainedTokenizerFast:
    """Train a word-level vocabulary on the corpus. Encoding a text prepends BOS, as the corpus does."""
    tok = Tokenizer(models.WordLevel(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    # Special tokens first, then words by frequency: ids are stable for a given corpus.
    trainer = trainers.WordLevelTrainer(special_tokens=[BOS, PAD, UNK], min_frequency=1)
    tok.train_from_iterator((" ".join(doc[1:]) for doc in corpus.docs), trainer=trainer)
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with single spaces
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=BOS, pad_token=PAD, unk_token=UNK,
        padding_side="left", model_max_length=256,
    )
