export { LocalProvisioner, hostnameFor, type LocalProvisionerOptions } from './provisioner.js';
export { ImageStore, normalizeRef, isValidRef, type LocalImage, type ImageRunConfig, type ResolvedImage } from './images.js';
export { DEFAULT_LOCAL_IMAGE, ensureDefaultImage, buildDefaultRootfs, writeSingleLayerLayout } from './default-image.js';
export { ContainerRuntime, detectRuntime, bundleFiles, which, type RuntimeInfo, type RuntimeName, type RuntimeState, type CreateOptions } from './runtime.js';
export { buildOciSpec, parseCpuQuantity, parseMemoryQuantity, type ContainerSpecInput, type OciSpec } from './spec.js';
export { OverlayMaterializer, CopyMaterializer, mountsUnder, unmountAll, type Materializer } from './rootfs.js';
export { ensureAttachRelay, openTerminalStream, type RelayCommand } from './attach.js';
export { cloneRepo, repoName } from './git.js';
export { readLogTail, followLog, parseLogLine } from './logs.js';
