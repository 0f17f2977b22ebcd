"""Feature extraction: disjoint shards, exact gathering, and the ViT probe feature."""
import pytest
import torch

from twist.distributed import DistEnv
from twist.eval.features import FeatureExtractor, ShardSampler, extract_features, gather_rows
from twist.models.backbones import build_backbone


@pytest.mark.parametrize("num_samples, world", [(15, 2), (16, 4), (3, 4), (0, 2)])
def test_shards_cover_every_index_exactly_once(num_samples, world):
    seen = sorted(i for rank in range(world) for i in ShardSampler(num_samples, rank, world))
    assert seen == list(range(num_samples))
    assert sum(len(ShardSampler(num_samples, r, world)) for r in range(world)) == num_samples


def test_gather_places_rows_by_index_and_refuses_duplicates_or_gaps():
    rows = torch.arange(12.0).view(6, 2)
    index = torch.tensor([5, 0, 3, 1, 4, 2])
    out = gather_rows(rows, index, 6, DistEnv())
    for r, i in enumerate(index.tolist()):
        assert torch.equal(out[i], rows[r])
    with pytest.raises(RuntimeError, match="1 missing, 1 seen more than once"):
        gather_rows(rows, torch.tensor([5, 0, 3, 1, 4, 4]), 6, DistEnv())


class _Items(torch.utils.data.Dataset):
    def __init__(self, images):
        self.images = images

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], i % 3, i


def test_extraction_keeps_dataset_order_and_eval_mode():
    torch.manual_seed(0)
    backbone = build_backbone("resnet18", small_input=True)
    extractor = FeatureExtractor(backbone.module, "resnet", backbone.feature_dim)
    extractor.train()
    images = torch.randn(7, 3, 16, 16)
    feats, labels = extract_features(extractor, _Items(images), batch_size=3, num_workers=0,
                                     device=torch.device("cpu"), env=DistEnv())
    assert extractor.training  # restored
    backbone.module.eval()
    with torch.no_grad():
        expected = backbone.module(images)
    torch.testing.assert_close(feats, expected, rtol=1e-5, atol=1e-5)
    assert labels.tolist() == [i % 3 for i in range(7)]


def test_vit_probe_feature_is_the_concatenated_normalised_cls_tokens():
    torch.manual_seed(0)
    backbone = build_backbone("deit_small", small_input=True, image_size=16)
    vit = backbone.module.eval()
    images = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        one = FeatureExtractor(vit, "vit", backbone.feature_dim, vit_last_blocks=1)(images)
        assert torch.allclose(one, vit(images), atol=1e-5)  # one block, no avgpool: the backbone's own feature

        probe = FeatureExtractor(vit, "vit", backbone.feature_dim, vit_last_blocks=4, vit_avgpool=True)
        out = probe(images)
        assert out.shape == (2, 384 * 5) and probe.feature_dim == 384 * 5
        # Independent computation: run the blocks by hand and keep the last four outputs.
        x = vit.norm_pre(vit._pos_embed(vit.patch_embed(images)))
        outputs = []
        for block in vit.blocks:
            x = block(x)
            outputs.append(vit.norm(x))
        expected = torch.cat([o[:, 0] for o in outputs[-4:]] + [outputs[-1][:, 1:].mean(1)], dim=1)
        torch.testing.assert_close(out, expected)
