"""Monte-Carlo Tree Search over reasoning steps: the tree, UCT, back-propagation, the search
process, the cross-tree scheduler, the resumable tree store and the export of chains."""
