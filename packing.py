"""Prefix-tree packing: sequences that share a prefix go through the model once per shared token.

A GRPO group is one prompt and G completions; the turn samples of one conversation share its history; every
sample of a world shares the system prompt and tool schemas. Padded rows recompute each shared prefix once per
sequence. Here the sequences of a row are merged into their prefix tree (a trie: a token that several sequences
hold after the same tokens is one node) and the row is the tree's nodes, each with

    position_ids[j] = depth of node j in its sequences (its position in each of them alone)
    mask[i, j]      = node j is node i or one of its ancestors

so node i attends to exactly the tokens before it in its own sequence, at the same positions: each hidden state is
that of the sequence computed alone, up to the order of floating-point sums (tests/test_packing.py). This is the
shared-prefix forward of Prefix Grouper (arXiv 2506.05433) generalised from one prefix to a tree. The mask is a
[rows, 1, L, L] boolean tensor, which transformers hands unchanged to the model's attention; only "sdpa" (the default)
and "eager" read such a mask, and each reads it differently (tree_mask). Flash attention reads none: under it every
token would attend to every earlier column of its row, other branches included, so it is refused.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PretrainedConfig

from cli import BadInput


@dataclass
class Packed:
    input_ids: torch.Tensor        # [R, L]: each row's tree nodes, then padding
    position_ids: torch.Tensor     # [R, L]
    attention_mask: torch.Tensor   # [R, 1, L, L] bool: True where node i may attend to node j
    nodes: list[list[int]]         # sequence k -> flat index (row x L + column) of each of its tokens
    n_sequence_tokens: int         # sum of the sequences' lengths: the tokens a padded batch would compute

    def predictors(self, k: int, first: int) -> list[int]:
        """Flat indices of the nodes whose hidden states predict tokens first, first + 1, ... of sequence k
        (the node before each: position t predicts token t + 1)."""
        return self.nodes[k][first - 1:-1]

    def to(self, device) -> "Packed":
        return Packed(self.input_ids.to(device), self.position_ids.to(device), self.attention_mask.to(device),
                      self.nodes, self.n_sequence_tokens)


def pack(rows: list[list[list[int]]], pad_id: int) -> Packed:
    """One packed row per entry of `rows` (a list of token sequences); sequence k of the result is the k-th of
    `rows` flattened in order. A row of one sequence each is a right-padded batch."""
    trees = [_prefix_tree(seqs) for seqs in rows]
    width = max(len(tokens) for tokens, _, _ in trees)
    R = len(rows)
    input_ids = torch.full((R, width), pad_id, dtype=torch.long)
    position_ids = torch.zeros((R, width), dtype=torch.long)
    mask = torch.eye(width, dtype=torch.bool).repeat(R, 1, 1)   # padding attends to itself only: no empty softmax
    nodes = []
    for r, (tokens, depth, paths) in enumerate(trees):
        input_ids[r, :len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        position_ids[r, :len(tokens)] = torch.tensor(depth, dtype=torch.long)
        for path in paths:
            idx = torch.tensor(path, dtype=torch.long)
            # within a path, node a attends to nodes 0..a of the path: its ancestors in the tree
            mask[r, idx[:, None], idx[None, :]] = torch.ones(len(path), len(path), dtype=torch.bool).tril()
            nodes.append([r * width + j for j in path])
    return Packed(input_ids, position_ids, mask[:, None], nodes, sum(len(s) for seqs in rows for s in seqs))


def _prefix_tree(sequences: list[list[int]]) -> tuple[list[int], list[int], list[list[int]]]:
    """The trie of `sequences`: node tokens, node depths, and each sequence's path of node indices."""
    tokens, depth, paths = [], [], []
    root: dict = {}
    for seq in sequences:
        children, path = root, []
        for t, token in enumerate(seq):
            if token not in children:
                children[token] = (len(tokens), {})
                tokens.append(token)
                depth.append(t)
            node, children = children[token]
            path.append(node)
        paths.append(path)
    return tokens, depth, paths


def hidden_states(model, packed: Packed, at: torch.Tensor) -> torch.Tensor:
    """The decoder's last hidden states at the flat node indices `at` (from Packed.nodes), [len(at), H].

    Gathered with index_select, not hidden[at]: where identical sequences share nodes, `at` repeats an index, and
    the backward of advanced indexing sums the repeats in an order that varies between runs on the CPU (so two runs
    of one seed drifted apart after a dozen GRPO steps); index_select's backward sums them in a fixed order.
    """
    decoder = model.get_decoder()
    out = decoder(input_ids=packed.input_ids, attention_mask=tree_mask(decoder.config, packed.attention_mask),
                  position_ids=packed.position_ids, use_cache=False).last_hidden_state
    return out.reshape(-1, out.shape[-1]).index_select(0, at)


def tree_mask(config: PretrainedConfig, mask: torch.Tensor) -> torch.Tensor:
    """The boolean tree mask in the form the config's attention implementation reads. transformers hands a 4D mask
    to the attention as it is: sdpa takes a boolean one (True = attend) and gets it unchanged, a byte an entry; eager
    *adds* its mask to the scores, so a boolean one would add 1 where attending is allowed and hide nothing (hidden
    states 4.2 off in the tiny model), and it gets 0 / the lowest float, the additive form of transformers' own eager
    masks. Any other implementation (flash attention, flex) is refused by name rather than train on wrong log-probs."""
    implementation = config._attn_implementation
    if implementation == "sdpa":
        return mask
    if implementation == "eager":
        return torch.zeros(mask.shape, device=mask.device).masked_fill_(~mask, torch.finfo(torch.float32).min)
    model = f"model '{config.name_or_path}': " if config.name_or_path else ""
    raise BadInput(f"{model}attn_implementation '{implementation}' cannot read packing.py's prefix-tree mask; set "
                   f"\"attn_implementation\" to \"sdpa\" (transformers' default) or \"eager\" in its config.json")


def tree_size(sequences: list[list[int]]) -> int:
    """The number of nodes of the sequences' prefix tree: the tokens their packed row computes."""
    return len(_prefix_tree(sequences)[0])
