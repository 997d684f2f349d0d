export { KubernetesProvisioner, type KubernetesProvisionerOptions, type KubernetesWeaverConfig } from './provisioner.js';
export { buildPod, cloneCommand, deadlineSeconds, repoDirName, workingDir, type PodSpecOptions } from './pod-spec.js';
export { podToWeaver, FATAL_WAITING_REASONS } from './status.js';
export { loadKubeConfig } from './client.js';
export * from './labels.js';
