from setuptools import find_packages, setup

with open("README.md", encoding="utf-8") as f:
    long_description = f.read()

setup(
    name="twist",
    version="0.1.0",
    description="TWIST self-supervised pretraining (twin class distributions) and transfer to dense prediction",
    long_description=long_description,
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    # tools/, detection/ and segmentation/ are installed as the packages twist_tools, twist_detection and
    # twist_segmentation (the console scripts implemented in tools/, the training entry points and configs).
    packages=find_packages(include=["twist", "twist.*"]) + ["twist_tools", "twist_detection", "twist_segmentation"],
    package_dir={"twist_tools": "tools", "twist_detection": "detection", "twist_segmentation": "segmentation"},
    package_data={"twist_detection": ["configs/*.yaml"], "twist_segmentation": ["configs/*.py", "configs/_base_/*.py"]},
    include_package_data=True,
    install_requires=[
        "torch>=2.4,<2.15",
        "torchvision>=0.19,<0.30",
        "timm>=1.0,<2",
        "numpy>=1.24",
        "scipy>=1.10",
        "scikit-learn>=1.3",
        "pyyaml>=6.0",
        "tqdm>=4.60",
        "pillow>=9.0",
        "matplotlib>=3.7",
        "tensorboard>=2.14",
        "lmdb>=1.4",
    ],
    extras_require={
        "dev": ["pytest>=7", "submitit>=1.5"],
        "slurm": ["submitit>=1.5"],
        "seg": ["mmengine>=0.10,<0.11", "mmcv-lite==2.1.0", "mmsegmentation==1.2.2", "ftfy", "regex"],
        # Detectron2 itself is installed from its own guide; it is not on the package index.
        "det": ["pycocotools>=2.0"],
        # logging.wandb / twist-eval --wandb: Weights & Biases beside log.jsonl and TensorBoard.
        "wandb": ["wandb>=0.17"],
    },
    entry_points={"console_scripts": ["twist-train=twist.cli.train:main", "twist-eval=twist.cli.eval:main",
                                      "twist-convert=twist_tools.convert:main",
                                      "twist-trials=twist.cli.trials:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
