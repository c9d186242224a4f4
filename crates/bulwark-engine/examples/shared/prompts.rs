//! The prompts the watermark examples have the model answer: requests for prose of
//! some length, on everyday subjects.

pub const PROMPTS: [&str; 12] = [
    "Write a long story about a lighthouse keeper who finds a message in a bottle.",
    "Explain in detail how bread is made, from the field to the bakery.",
    "Describe a walk through a busy market in a city you like.",
    "Write a letter to a friend about your plans for the summer holidays.",
    "Explain how a bicycle works to a ten-year-old.",
    "What are the causes of inflation? Answer at length.",
    "Tell the story of a dog that learns to swim.",
    "Describe the water cycle in detail.",
    "Give advice to someone starting their first job.",
    "Write a review of an imaginary restaurant.",
    "Explain why the sky is blue.",
    "Describe a day in the life of a farmer.",
];
